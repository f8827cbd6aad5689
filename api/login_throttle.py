"""Slows down guessing at the admin login: after too many failures from one client address in a
window, further attempts get 429 until the window has passed. In-process (per API process): a
deployment with several API replicas multiplies the allowance, which stays far below what
guessing a 256-bit key would need; it exists to stop noise and to make guessing visible."""

from __future__ import annotations

import threading
import time
from collections import deque

MAX_FAILURES = 10
WINDOW_S = 300.0


class LoginThrottle:
    def __init__(self, max_failures: int = MAX_FAILURES, window_s: float = WINDOW_S) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after_s(self, client: str, now: float | None = None) -> int:
        """Seconds until `client` may try again; 0 when it may try now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = self._recent(client, now)
            if len(recent) < self.max_failures:
                return 0
            return max(1, int(recent[0] + self.window_s - now) + 1)

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._recent(client, now).append(now)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)

    def _recent(self, client: str, now: float) -> deque[float]:
        failures = self._failures.setdefault(client, deque())
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        return failures
