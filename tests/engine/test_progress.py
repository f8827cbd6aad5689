"""The one progress display: a bar redrawn in place on a terminal, plain lines (one per stage, then
one per interval and the last step) anywhere else, so a log file never gets one endless `\\r` line."""

from __future__ import annotations

import io

from engine.progress import ProgressDisplay


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_not_a_terminal_gives_plain_periodic_lines() -> None:
    out, clock = io.StringIO(), Clock()
    display = ProgressDisplay(out, interval_s=5.0, clock=clock, tty=False)
    display.stage("text_encoding")
    display.stage("denoising")
    for step in range(1, 31):  # one step a second
        clock.now += 1.0
        display.step(step, 30)
    display.stage("decoding")
    display.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "text_encoding ..." and lines[1] == "denoising ..." and lines[-1] == "decoding ..."
    steps = [line.split()[1] for line in lines if line.startswith("  denoising")]
    assert steps == ["5/30", "10/30", "15/30", "20/30", "25/30", "30/30"]  # every 5 s, and the last
    assert "  denoising 30/30 (100%) 1.00 step/s ETA 0:00:00" in lines


def test_a_terminal_gets_a_bar_redrawn_in_place() -> None:
    out = io.StringIO()
    display = ProgressDisplay(out, tty=True)
    display.stage("denoising")
    for step in range(1, 5):
        display.step(step, 4)
    display.stage("decoding")
    display.close()
    text = out.getvalue()
    assert "\r" in text and "4/4" in text and "100%" in text
    assert text.count("denoising ...") == 1 and text.rstrip().endswith("decoding ...")
