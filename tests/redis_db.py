"""The Redis database a test run uses, and the rule that it only ever empties one it owns.

A run *claims* a database: it writes an owner marker (``vidq:test-run``: host, pid) into it, which
succeeds only if no live run holds it, and keeps it only if the database held nothing else, or
only what an earlier vidq test run left there. Only a claimed database is ever flushed, at the
start and at the end of the run, and the marker is written back after every flush.

``VIDQ_TEST_REDIS_DB=N`` names the database (parallel runs on one machine use one number each);
without it the run claims the first empty one from 15 down. A database with anyone else's keys
is refused with a message saying so, never flushed.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from fnmatch import fnmatchcase

import redis

OWNER_KEY = "vidq:test-run"
# What a vidq test run leaves behind: Celery/kombu's queues and bindings, vidq's own keys. Runs
# before the owner marker existed left these, so a database holding only them may be claimed.
VIDQ_KEY_PATTERNS = (
    "vidq:*",
    "_kombu.*",
    "unacked*",
    "celery*",
    "gpu.*",
    "worker.*",
    "webhooks",
)


class RedisDatabaseBusy(RuntimeError):
    pass


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's run: cannot tell, so assume it is alive
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _only_vidq_keys(client: redis.Redis) -> bool:
    for key in client.scan_iter(count=500):
        name = key.decode(errors="replace")
        if name != OWNER_KEY and not any(fnmatchcase(name, p) for p in VIDQ_KEY_PATTERNS):
            return False
    return True


@dataclass
class ClaimedDatabase:
    base_url: str
    db: int

    @property
    def url(self) -> str:
        return f"{self.base_url}/{self.db}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def flush(self) -> None:
        """Empty the database (it is ours) and write the marker back."""
        client = self.client()
        client.flushdb()
        client.set(OWNER_KEY, _me())

    def release(self) -> None:
        client = self.client()
        if (client.get(OWNER_KEY) or b"").decode() == _me():
            client.flushdb()


def claim(base_url: str, db: int) -> ClaimedDatabase:
    """Claim database `db` or raise RedisDatabaseBusy saying why not."""
    client = redis.Redis.from_url(f"{base_url}/{db}")
    owner = (client.get(OWNER_KEY) or b"").decode()
    if owner and owner != _me() and _owner_alive(owner):
        raise RedisDatabaseBusy(f"Redis database {db} is in use by another test run ({owner})")
    if not owner and client.dbsize() and not _only_vidq_keys(client):
        raise RedisDatabaseBusy(
            f"Redis database {db} holds keys that no vidq test run wrote; the tests never flush it. "
            "Set VIDQ_TEST_REDIS_DB to an empty database (or empty this one yourself)."
        )
    # Atomic hand-over: only one run wins the marker, even when two start at once.
    if owner:
        won = client.set(OWNER_KEY, _me(), xx=True, get=True) in (owner.encode(), _me().encode())
    else:
        won = bool(client.set(OWNER_KEY, _me(), nx=True))
    if not won:
        raise RedisDatabaseBusy(f"Redis database {db} was claimed by another test run just now")
    claimed = ClaimedDatabase(base_url, db)
    claimed.flush()
    return claimed


def claim_any(base_url: str, explicit: int | None) -> ClaimedDatabase:
    """The named database, or the first one (from the highest down) that can be claimed."""
    if explicit is not None:
        return claim(base_url, explicit)
    count = int(redis.Redis.from_url(f"{base_url}/0").config_get("databases").get("databases", 16))
    for db in range(count - 1, 0, -1):
        try:
            return claim(base_url, db)
        except RedisDatabaseBusy:
            continue
    raise RedisDatabaseBusy("no Redis database could be claimed for the tests: set VIDQ_TEST_REDIS_DB")
