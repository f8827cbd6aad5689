"""Bounds on event streams (SSE): how many one API key holds open in this process, and how long
each lives. A stream holds no database connection while open, but it holds a socket, a task and a
pub/sub subscription: without a cap one key could open thousands. The lifetime bound makes a
stream end cleanly after ``VIDQ_STREAM_MAX_LIFETIME_S``; clients (EventSource, the SDK) reconnect,
and the first event of a new stream is the job's current state, so nothing is lost."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from jobs.errors import TooManyRequests

T = TypeVar("T")


class StreamSlots:
    def __init__(self) -> None:
        self._open: dict[int, int] = {}
        self._lock = threading.Lock()  # taken in the route's thread and released in the event loop

    def acquire(self, key_id: int, limit: int) -> None:
        with self._lock:
            if self._open.get(key_id, 0) >= limit:
                raise TooManyRequests(
                    f"this key has {limit} event streams open (VIDQ_MAX_STREAMS_PER_KEY); close one first",
                    code="too_many_streams",
                )
            self._open[key_id] = self._open.get(key_id, 0) + 1

    def release(self, key_id: int) -> None:
        with self._lock:
            left = self._open.get(key_id, 0) - 1
            if left > 0:
                self._open[key_id] = left
            else:
                self._open.pop(key_id, None)

    def open(self, key_id: int) -> int:
        with self._lock:
            return self._open.get(key_id, 0)

    @contextmanager
    def held(self, key_id: int) -> Iterator[None]:
        try:
            yield
        finally:
            self.release(key_id)


async def bounded(
    items: AsyncIterator[T], *, lifetime_s: float, clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[T]:
    """``items`` until they end or ``lifetime_s`` has passed, whichever is first; the source is
    closed either way. Checked at each item: a job's stream yields at least a heartbeat every
    ``VIDQ_SSE_HEARTBEAT_S``, so it ends within one heartbeat of the deadline."""
    deadline = clock() + lifetime_s
    try:
        async for item in items:
            yield item
            if clock() >= deadline:
                return
    finally:
        await items.aclose()  # type: ignore[attr-defined]
