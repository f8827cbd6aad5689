"""Readiness: whether the database, the broker and object storage answer, decided within a deadline.

Each check runs on its own thread and the probe waits at most ``deadline_s`` for all of them, so
``/readyz`` answers in bounded time whatever its dependencies do (a hung S3 or a blackholed database
is reported as not answering). A check still running from an earlier probe is not started again:
that dependency is reported as still not answering, so a slow dependency cannot pile up threads.
Checks only read; nothing is created (no bucket, no table).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_S = 1.5  # well inside the 2 s a load balancer's probe waits


class ReadinessProbe:
    """``checks`` maps a dependency's name to a function that raises when it is unreachable."""

    def __init__(self, checks: dict[str, Callable[[], None]], deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        self.checks = checks
        self.deadline_s = deadline_s
        self._executor = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="vidq-readyz")
        self._running: dict[str, Future[None]] = {}
        self._lock = threading.Lock()

    def run(self) -> dict[str, str | None]:
        """Each dependency's problem (None when it answered), in the order of ``checks``."""
        futures: dict[str, Future[None]] = {}
        with self._lock:
            for name, check in self.checks.items():
                running = self._running.get(name)
                if running is None or running.done():
                    running = self._running[name] = self._executor.submit(check)
                futures[name] = running
        wait(futures.values(), timeout=self.deadline_s)
        problems: dict[str, str | None] = {}
        for name, future in futures.items():
            if not future.done():
                problems[name] = f"{name} did not answer within {self.deadline_s:g}s"
            elif (exc := future.exception()) is not None:
                problems[name] = f"{name} is unreachable: {type(exc).__name__}"
                log.warning("readiness: %s unreachable: %s", name, exc)
            else:
                problems[name] = None
        return problems

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
