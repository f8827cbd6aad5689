"""The one progress display of every vidq command (``generate``, ``demo``, ``submit --wait``).

On a terminal it is a tqdm bar redrawn in place, with stage changes printed above it. Anywhere else
(a log file, a pipe, CI) redrawing with ``\\r`` would make one endless line, so it writes plain
lines instead: one per stage change, then one per ``interval_s`` while steps advance, and the last
step. Only tqdm is needed (no torch), so the API-only install draws the same bar.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

PLAIN_INTERVAL_S = 5.0


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class ProgressDisplay:
    """Stages and steps of one piece of work. ``stage(name)`` starts a stage (a line of its own);
    ``step(done, total)`` moves the bar. Call ``close()`` at the end (or use it as a context)."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval_s: float = PLAIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        tty: bool | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval_s = interval_s
        self.clock = clock
        self._bar: tqdm | None = None
        self._stage: str | None = None
        self._stage_started = clock()
        self._last_line_at = float("-inf")
        self._last_step: tuple[int, int] | None = None

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stage(self, name: str, detail: str = "") -> None:
        """Announce a stage (printed once, even if announced again)."""
        if name == self._stage:
            return
        self._close_bar()
        self._stage, self._stage_started, self._last_step = name, self.clock(), None
        self._line(f"{name} ...{' ' + detail if detail else ''}")

    def step(self, done: int, total: int, elapsed_s: float | None = None) -> None:
        """`done` of `total` steps of the current stage; `elapsed_s` since the stage began (else measured)."""
        if total <= 0 or (done, total) == self._last_step:
            return
        self._last_step = (done, total)
        elapsed = elapsed_s if elapsed_s is not None else self.clock() - self._stage_started
        if self.tty:
            if self._bar is None or self._bar.total != total:
                self._close_bar()
                # A terminal that reports no size (some multiplexers, `script`) would hide the bar.
                size = shutil.get_terminal_size((100, 20))
                self._bar = tqdm(
                    total=total,
                    desc=self._stage or "",
                    unit="step",
                    file=self.stream,
                    leave=True,
                    ncols=min(size.columns, 120),
                    nrows=max(size.lines, 5),
                )
            self._bar.n = done
            self._bar.refresh()
            return
        now = self.clock()
        if done == total or now - self._last_line_at >= self.interval_s:
            rate = done / elapsed if elapsed > 0 else 0.0
            eta = (total - done) / rate if rate > 0 else 0.0
            pct = 100 * done // total
            self._line(f"  {self._stage or 'step'} {done}/{total} ({pct}%) {rate:.2f} step/s ETA {_clock(eta)}")

    def message(self, text: str) -> None:
        """A line of its own that does not disturb the bar."""
        self._line(text)

    def close(self) -> None:
        self._close_bar()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _line(self, text: str) -> None:
        self._last_line_at = self.clock()
        if self._bar is not None:
            tqdm.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()
