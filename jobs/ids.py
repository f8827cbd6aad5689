"""Job ids: ``video_`` + 26 Crockford base32 characters, sortable by creation time (ULID layout).

Sortable ids make "newest first" and cursor pagination an index scan on the primary key.
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
JOB_ID_PREFIX = "video_"


def _b32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def new_ulid(now_ms: int | None = None) -> str:
    """48 bits of milliseconds then 80 random bits, 26 characters."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return _b32(ms, 10) + _b32(secrets.randbits(80), 16)


def new_job_id() -> str:
    return JOB_ID_PREFIX + new_ulid()
