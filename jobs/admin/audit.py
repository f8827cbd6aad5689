"""The audit log: every admin action, who took it, on what, and when."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.db import utcnow
from jobs.models import ApiKey, AuditEntry


def actor_label(key: ApiKey) -> str:
    return f"{key.name} ({key.prefix}…)"


def record(
    *, session: Session, actor: ApiKey, action: str, target: str, detail: dict[str, Any] | None = None
) -> AuditEntry:
    """Add an audit row in the caller's transaction, so an action and its record commit together."""
    entry = AuditEntry(
        at=utcnow(), actor_key_id=actor.id, actor=actor_label(actor), action=action, target=target[:200], detail=detail
    )
    session.add(entry)
    return entry


def recent(*, session: Session, limit: int = 50) -> list[AuditEntry]:
    return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)))
