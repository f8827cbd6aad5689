"""API keys: creation, hashing and lookup.

Keys carry 256 random bits, so a plain SHA-256 is a sufficient one-way store (no slow KDF needed,
and lookup stays an index probe). The plaintext is returned once, at creation.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

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


def authenticate(*, session: Session, plaintext: str) -> ApiKey:
    """Return the active key for ``plaintext`` or raise Unauthenticated (never saying which part failed)."""
    if not plaintext.startswith(KEY_PREFIX):
        raise Unauthenticated("invalid API key")
    record = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(plaintext)))
    if record is None or record.revoked_at is not None:
        raise Unauthenticated("invalid API key")
    return record


def revoke_key(*, session: Session, key_id: int) -> ApiKey:
    record = session.get(ApiKey, key_id)
    if record is None:
        raise NotFound(f"no API key {key_id}")
    if record.revoked_at is None:
        record.revoked_at = utcnow()
    return record


def list_keys(*, session: Session) -> list[ApiKey]:
    """Every key, oldest first (revoked ones too: their ids stay meaningful in the audit log)."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))
