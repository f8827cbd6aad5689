"""A job's progress on the terminal, from the API's job objects or event-stream events.

Drawn by the engine's ``ProgressDisplay`` (the one progress display of every vidq command): each
stage a line, denoising steps as a bar on a TTY and as periodic plain lines elsewhere.
"""

from __future__ import annotations

from typing import Any, TextIO

from engine.progress import ProgressDisplay
from spec.stages import Stage

TERMINAL = ("completed", "failed", "cancelled")


class JobProgressBar:
    """Feed it every job object or event (``update``); it prints stages as they begin and steps as
    they advance. Events carry ``step``, job objects ``current_step``: both are understood."""

    def __init__(self, stream: TextIO | None = None, *, display: ProgressDisplay | None = None) -> None:
        self.display = display or ProgressDisplay(stream)
        self.stages_seen: list[str] = []

    def update(self, item: dict[str, Any]) -> None:
        status = item.get("status")
        if status == "queued":
            position = item.get("queue_position")
            self._stage("queued", f"(queue position {position})" if position else "")
            return
        stage = item.get("stage")
        if status == "in_progress" and stage:
            self._stage(stage)
            total = int(item.get("total_steps") or 0)
            step = item.get("step", item.get("current_step"))
            if stage == Stage.DENOISING and total and step is not None:
                self.display.step(int(step), total)
        elif status in TERMINAL:
            self._stage(status)

    def _stage(self, name: str, detail: str = "") -> None:
        if name not in self.stages_seen:
            self.stages_seen.append(name)
        self.display.stage(name, detail)

    def close(self) -> None:
        self.display.close()
