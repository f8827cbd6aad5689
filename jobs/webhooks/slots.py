"""Webhook attempts in flight per client (API key), capped across every sender process.

A client whose receivers are slow fills its own slots (``VIDQ_WEBHOOK_CLIENT_CONCURRENCY``), never
every sender thread. With several sender processes (``vidq worker --queues webhooks`` on many hosts)
the cap must hold for all of them together, so the slots live in Redis (:class:`RedisClientSlots`):
each attempt holds a *lease* with an expiry, so a sender killed in the middle of an attempt cannot
leak its slot; the lease simply runs out. An attempt never outlives its lease: the lease lasts the
whole-attempt deadline (``VIDQ_WEBHOOK_TIMEOUT_S``) plus a margin. Embedded mode (one process, no
Redis) counts in memory (:class:`MemoryClientSlots`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Protocol

import redis

from jobs.broker import redis_client
from jobs.settings import Settings

LEASE_MARGIN_S = 30.0  # a lease outlasts its attempt's deadline by this much
KEY_PREFIX = "vidq:webhook-slots:"

# KEYS[1]: the client's lease set (member: lease id, score: expiry in ms); ARGV: now ms, limit,
# lease id, expiry ms, lease ms. Leases past their expiry are dropped first, then one is added if there
# is room; the set itself disappears once its newest lease is over (nothing left to clean up).
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


class ClientSlots(Protocol):
    def acquire(self, client: int, limit: int) -> str | None:
        """A lease on one of ``client``'s ``limit`` slots, or None when all are taken."""

    def release(self, client: int, lease: str) -> None:
        """Give the lease back (a lease already expired is a no-op)."""

    def in_flight(self, client: int) -> int:
        """Leases ``client`` holds now (expired ones not counted)."""


class MemoryClientSlots:
    """One process's count (embedded mode: the only sender)."""

    def __init__(self) -> None:
        self._leases: dict[int, set[str]] = {}
        self._lock = threading.Lock()

    def acquire(self, client: int, limit: int) -> str | None:
        with self._lock:
            held = self._leases.setdefault(client, set())
            if len(held) >= limit:
                return None
            lease = uuid.uuid4().hex
            held.add(lease)
            return lease

    def release(self, client: int, lease: str) -> None:
        with self._lock:
            held = self._leases.get(client, set())
            held.discard(lease)
            if not held:
                self._leases.pop(client, None)

    def in_flight(self, client: int) -> int:
        with self._lock:
            return len(self._leases.get(client, ()))


class RedisClientSlots:
    """Every sender's count, in Redis: a sorted set of leases per client, changed atomically (Lua).

    ``clock`` (Unix seconds) dates the leases; the senders' clocks need only agree to well within
    ``lease_s`` (tens of seconds), which NTP-synchronised hosts do.
    """

    def __init__(self, client: redis.Redis, *, lease_s: float, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.lease_s = lease_s
        self._clock = clock
        self._acquire = client.register_script(_ACQUIRE)

    def acquire(self, client: int, limit: int) -> str | None:
        now_ms = int(self._clock() * 1000)
        lease = uuid.uuid4().hex
        lease_ms = int(self.lease_s * 1000)
        args = [now_ms, limit, lease, now_ms + lease_ms, lease_ms]
        return lease if self._acquire(keys=[KEY_PREFIX + str(client)], args=args) else None

    def release(self, client: int, lease: str) -> None:
        self.client.zrem(KEY_PREFIX + str(client), lease)

    def in_flight(self, client: int) -> int:
        return int(self.client.zcount(KEY_PREFIX + str(client), int(self._clock() * 1000) + 1, "+inf"))


def make_client_slots(settings: Settings) -> ClientSlots:
    """Redis-held slots shared by every sender when there is Redis; else this process's own."""
    if settings.redis_url:
        return RedisClientSlots(redis_client(settings.redis_url), lease_s=settings.webhook_timeout_s + LEASE_MARGIN_S)
    return MemoryClientSlots()
