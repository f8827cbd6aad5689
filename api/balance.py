"""Spreading keep-alive connections evenly over the processes of ``vidq api --workers N``.

The N processes share one listening socket, and a connection stays with the process that accepted
it for as long as the client keeps it open. Which process accepts is a race: a burst of new
connections (a client pool starting up) is taken in one go by whichever event loop wakes first
(asyncio accepts everything pending at once), and it then keeps them. Counted with ``ss`` under
``benchmarks/bench_service.py``'s 64 clients on two processes: splits of 38/26 and 43/21, where the
busier process answered its clients about twice as slowly, which set the p99 (in 20-s loads with a
throwaway script, two single processes given 32 clients each served 17-41% more submits per second
than ``--workers 2`` run just before or after).

The same holds after a crash: uvicorn restarts the process, but the survivor keeps every client
that reconnected meanwhile, and the new process serves only the few that reconnect after it is up
(measured: 64/0 and 34/14 for as long as the clients stayed, against 33/31 within 8 s with this).

So the processes publish their load on a shared board (a small memory-mapped file, one slot per
process: its pid, its requests in flight, when it last changed) and a process that carries clearly
more than the average closes a connection after answering on it (``Connection: close``, which every
HTTP client handles by reconnecting). The reconnect goes back to the shared socket, where a process
waiting for work, not the busy one, tends to accept first. Closes are spaced out
(``SHED_INTERVAL_S``) so one imbalance costs a few reconnects, not a storm.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import time
from pathlib import Path

SLOTS = 256  # more than any sensible --workers
_SLOT = struct.Struct("<qqd")  # pid, requests in flight, time.time() of the last change
_SIZE = SLOTS * _SLOT.size
STALE_AFTER_S = 30.0  # a slot not written for this long counts as idle (its process may be gone)
SHED_MARGIN = 0.05  # shed when in flight > average * (1 + margin) + SHED_MIN_EXCESS
SHED_MIN_EXCESS = 1
SHED_INTERVAL_S = 0.05  # at most one close per process per interval


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LoadBoard:
    """One process's view of the shared board: its own slot to write, everyone's to read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # claiming a slot: one process at a time
            if os.fstat(fd).st_size < _SIZE:
                os.ftruncate(fd, _SIZE)
            self._map = mmap.mmap(fd, _SIZE)
            self.slot = self._claim()
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self.offset = self.slot * _SLOT.size
        self.write(0)

    def _claim(self) -> int:
        me = os.getpid()
        for slot in range(SLOTS):
            pid, _, _ = _SLOT.unpack_from(self._map, slot * _SLOT.size)
            if pid in (0, me) or not _alive(pid):
                _SLOT.pack_into(self._map, slot * _SLOT.size, me, 0, time.time())
                return slot
        raise RuntimeError(f"the load board {self.path} has no free slot (more than {SLOTS} API processes?)")

    def write(self, in_flight: int) -> None:
        _SLOT.pack_into(self._map, self.offset, os.getpid(), in_flight, time.time())

    def loads(self) -> list[int]:
        """Every live process's requests in flight (stale slots count as idle)."""
        now = time.time()  # read on every answer: one pass over the board in C (iter_unpack)
        return [
            in_flight if now - changed < STALE_AFTER_S else 0
            for pid, in_flight, changed in _SLOT.iter_unpack(self._map)
            if pid
        ]

    def release(self) -> None:
        _SLOT.pack_into(self._map, self.offset, 0, 0, 0.0)


class Balancer:
    """Decides, as a response starts, whether this process should close the connection."""

    def __init__(self, board: LoadBoard) -> None:
        self.board = board
        self._last_shed = 0.0

    def changed(self, in_flight: int) -> None:
        self.board.write(in_flight)

    def should_shed(self, in_flight: int) -> bool:
        if in_flight <= SHED_MIN_EXCESS:  # never over the average by enough: skip reading the board
            return False
        now = time.monotonic()
        if now - self._last_shed < SHED_INTERVAL_S:
            return False
        loads = self.board.loads()
        if len(loads) < 2:
            return False
        average = sum(loads) / len(loads)
        if in_flight <= average * (1 + SHED_MARGIN) + SHED_MIN_EXCESS:
            return False
        self._last_shed = now
        return True
