"""API keys: creation, hashing and lookup.

Keys carry 256 random bits, so a plain SHA-256 is a sufficient one-way store (no slow KDF needed,
and lookup stays an index probe). The plaintext is returned once, at creation.

Every API request authenticates, so each API process keeps the keys it saw for a moment
(:class:`KeyCache`, ``VIDQ_API_KEY_CACHE_S``): a busy client costs one key query per interval
instead of one per request. A revocation takes effect at once in the process that revoked (its
cache forgets the key when the revocation commits) and within the interval in the others.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, make_transient_to_detached

from jobs import metrics
from jobs.db import utcnow
from jobs.errors import NotFound, Unauthenticated
from jobs.models import ApiKey

KEY_PREFIX = "vq_"


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


@dataclass(frozen=True)
class CreatedKey:
    record: ApiKey
    plaintext: str


def create_key(*, session: Session, name: str, is_admin: bool = False) -> CreatedKey:
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(
        name=name, prefix=plaintext[:10], key_hash=hash_key(plaintext), is_admin=is_admin, created_at=utcnow()
    )
    session.add(record)
    session.flush()
    return CreatedKey(record=record, plaintext=plaintext)


REFRESH_GRACE_S = 1.0  # how long an expired copy may still serve others while one request looks the key up


class KeyCache:
    """Active keys by hash, each kept ``ttl_s`` seconds (0: nothing is kept), at most ``max_keys``.
    When a key's interval ends, one request looks it up again (single flight) while the others keep
    the copy for the time of that lookup.

    Holds detached copies; :func:`authenticate` merges one into the request's session without a
    query, so routes get a key row of their own session as before. Thread-safe (route threads).
    """

    def __init__(self, ttl_s: float, *, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._clock = clock
        self._keys: dict[str, tuple[ApiKey, float]] = {}
        self._lock = threading.Lock()
        _CACHES.add(self)

    def known(self, plaintext: str, *, session: Session) -> ApiKey | None:
        """The cached key for ``plaintext`` as a row of ``session`` (merged without a query), or None
        when it is not cached (then :func:`authenticate` must look it up)."""
        cached = self.get(hash_key(plaintext)) if self.ttl_s > 0 else None
        return session.merge(cached, load=False) if cached is not None else None

    def get(self, key_hash: str) -> ApiKey | None:
        with self._lock:
            entry = self._keys.get(key_hash)
            if entry is None:
                return None
            record, until = entry
            now = self._clock()
            if now < until:
                return record
            # Expired: this caller looks the key up again (and puts or forgets it); the requests that
            # arrive meanwhile keep the copy instead of all querying at once. Should the lookup never
            # finish, the copy ends REFRESH_GRACE_S later and the next caller looks it up.
            self._keys[key_hash] = (record, now + REFRESH_GRACE_S)
            return None

    def put(self, key_hash: str, record: ApiKey) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._keys) >= self.max_keys:
                self._keys.clear()  # a flood of distinct keys: start over rather than grow
            self._keys[key_hash] = (record, self._clock() + self.ttl_s)

    def forget(self, key_hash: str) -> None:
        with self._lock:
            self._keys.pop(key_hash, None)


_CACHES: weakref.WeakSet[KeyCache] = weakref.WeakSet()  # every cache of this process, for revocations


def authenticate(*, session: Session, plaintext: str, cache: KeyCache | None = None) -> ApiKey:
    """Return the active key for ``plaintext`` or raise Unauthenticated (never saying which part failed).

    With ``cache``, a key seen within its interval is taken from it (merged into ``session``, no query)."""
    if not plaintext.startswith(KEY_PREFIX):
        raise Unauthenticated("invalid API key")
    if cache is not None:
        known = cache.known(plaintext, session=session)
        if known is not None:
            return known
    key_hash = hash_key(plaintext)
    record = session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))
    if record is None or record.revoked_at is not None:
        if cache is not None:
            cache.forget(key_hash)  # the copy others were given meanwhile ends now
        raise Unauthenticated("invalid API key")
    if cache is not None:
        cache.put(key_hash, _detached_copy(record))
    return record


def _detached_copy(record: ApiKey) -> ApiKey:
    """A detached copy (no session holds it; the request's row stays the request's)."""
    copy = ApiKey(
        id=record.id,
        name=record.name,
        prefix=record.prefix,
        key_hash=record.key_hash,
        is_admin=record.is_admin,
        created_at=record.created_at,
        revoked_at=record.revoked_at,
        webhook_secret=record.webhook_secret,
    )
    make_transient_to_detached(copy)  # what merge(load=False) needs: an identity, no pending change
    return copy


def revoke_key(*, session: Session, key_id: int) -> ApiKey:
    """Revoke the key (from the commit on, this process's key caches no longer answer for it)."""
    record = session.get(ApiKey, key_id)
    if record is None:
        raise NotFound(f"no API key {key_id}")
    if record.revoked_at is None:
        record.revoked_at = utcnow()
    key_hash = record.key_hash
    metrics.after_commit(session, lambda: _forget_everywhere(key_hash))
    return record


def _forget_everywhere(key_hash: str) -> None:
    for cache in list(_CACHES):
        cache.forget(key_hash)


def list_keys(*, session: Session) -> list[ApiKey]:
    """Every key, oldest first (revoked ones too: their ids stay meaningful in the audit log)."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))
