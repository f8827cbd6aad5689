"""A one-line terminal progress bar for a job's progress (no dependency, redraws in place on a TTY).

It takes job objects (polling) and event-stream events (``step`` instead of ``current_step``)."""

from __future__ import annotations

import sys
from typing import Any, TextIO


class JobProgressBar:
    def __init__(self, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self._last = ""
        self._tty = stream.isatty()

    def update(self, job: dict[str, Any]) -> None:
        progress = int(job.get("progress") or 0)
        filled = self.width * progress // 100
        bar = "#" * filled + "-" * (self.width - filled)
        stage = job.get("stage") or job["status"]
        step = f"step {job.get('current_step', job.get('step', 0))}/{job.get('total_steps', 0)}"
        queue = f" (queue position {job['queue_position']})" if job.get("queue_position") else ""
        line = f"[{bar}] {progress:3d}% {stage:<13} {step}{queue}"
        if line == self._last:
            return
        self._last = line
        if self._tty:
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._tty and self._last:
            self.stream.write("\n")
            self.stream.flush()
