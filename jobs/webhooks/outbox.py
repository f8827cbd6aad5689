"""Webhook events as outbox rows: one ``WebhookDelivery`` per interested target, published later.

The relay (``jobs.relay``) turns each committed state change (a ``JobEvent``) into deliveries with
:func:`add_deliveries`, in the transaction that marks the event relayed, so each event yields its
rows exactly once; ``video.progress`` deliveries are written by the render's progress writes
(:func:`add_progress_event`). Targets are the job's ``webhook_url`` and the owner's enabled
endpoints, each through its event filter. :func:`relay_webhooks` publishes due rows to the
``webhooks`` queue — never a GPU queue. :func:`event_body` is the one builder of a webhook body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from jobs.db import bound_idle_transaction, session_scope, utcnow
from jobs.errors import InvalidParameter
from jobs.events import EVENT_FOR_STATUS, JobEventType
from jobs.ids import new_ulid
from jobs.models import Job, WebhookDelivery, WebhookEndpoint
from jobs.public import VideoPublic, unix
from jobs.settings import Settings

log = logging.getLogger(__name__)

DELIVERY_ID_PREFIX = "msg_"
PROGRESS_EVENT_INTERVAL_S = 1.0  # at most one video.progress per second per job


# A webhook announces a job event (`jobs.events.JobEventType`: the state changes and video.progress).
WebhookEvent = JobEventType
# With no filter a target gets every state change; progress only when a filter names it.
DEFAULT_EVENTS = frozenset(EVENT_FOR_STATUS.values())


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class WebhookPublisher(Protocol):
    def publish_webhook(self, delivery_id: str, attempt: int) -> None:
        """Send the delivery task for attempt number ``attempt`` (0-based) to the webhooks queue."""

    def webhook_in_flight(self, delivery_id: str, attempt: int) -> bool:
        """Whether the broker still holds the message published for that attempt."""


def check_event_filter(events: Iterable[str] | None, *, param: str) -> list[str] | None:
    """Validate a client's ``events`` filter; None means the default (every state change)."""
    if events is None:
        return None
    chosen = list(dict.fromkeys(events))
    if not chosen:
        raise InvalidParameter(f"{param} must name at least one event (or be left out)", param=param)
    known = {e.value for e in WebhookEvent}
    unknown = [e for e in chosen if e not in known]
    if unknown:
        raise InvalidParameter(
            f"unknown event {unknown[0]!r} in {param}; known: {', '.join(sorted(known))}", param=param
        )
    return chosen


def receives(events: list[str] | None) -> list[str]:
    """The events a target with filter ``events`` receives, in lifecycle order."""
    return [e.value for e in WebhookEvent if wants(events, e)]


def wants(events: list[str] | None, event: WebhookEvent) -> bool:
    return event in DEFAULT_EVENTS if events is None else event.value in events


def endpoints_of(session: Session, owner_ids: set[int]) -> dict[int, list[WebhookEndpoint]]:
    """The enabled endpoints of each owner in ``owner_ids`` (one query), oldest first.

    Locked FOR KEY SHARE: an endpoint being deleted is waited for (and then skipped), so a delivery
    row never references an endpoint deleted meanwhile (a foreign-key error in a job's transaction).
    """
    by_owner: dict[int, list[WebhookEndpoint]] = {}
    if not owner_ids:
        return by_owner
    endpoints = session.scalars(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.owner_id.in_(owner_ids), WebhookEndpoint.disabled_at.is_(None))
        .order_by(WebhookEndpoint.id)
        .with_for_update(key_share=True)
    )
    for endpoint in endpoints:
        by_owner.setdefault(endpoint.owner_id, []).append(endpoint)
    return by_owner


def _targets(
    session: Session, job: Job, event: WebhookEvent, endpoints: list[WebhookEndpoint] | None = None
) -> list[tuple[str, str | None]]:
    """(url, endpoint id) of everyone who wants ``event`` of ``job``; endpoint id None is the job's URL.
    ``endpoints``: the owner's, already read with :func:`endpoints_of` (else they are read here)."""
    targets: list[tuple[str, str | None]] = []
    if job.webhook_url and wants(job.webhook_events, event):
        targets.append((job.webhook_url, None))
    if endpoints is None:
        endpoints = endpoints_of(session, {job.owner_id}).get(job.owner_id, [])
    targets.extend((e.url, e.id) for e in endpoints if wants(e.events, event))
    return targets


def event_body(data: dict[str, Any], event: WebhookEvent, *, delivery_id: str, created_at: datetime) -> str:
    """The webhook body, in OpenAI's event envelope (what its SDK's ``webhooks.unwrap`` parses).

    ``id`` is the delivery's id, which is also the ``webhook-id`` header: the same on every retry and
    replay, so a receiver deduplicates on either. ``data`` is the public job (with its ``id``).
    """
    envelope = {
        "id": delivery_id,
        "object": "event",
        "created_at": unix(created_at),
        "type": event.value,
        "data": data,
    }
    return json.dumps(envelope, separators=(",", ":"))


def add_deliveries(
    *,
    session: Session,
    job: Job,
    event: WebhookEvent,
    data: dict[str, Any],
    event_id: int | None = None,
    now: datetime | None = None,
    endpoints: list[WebhookEndpoint] | None = None,
) -> list[WebhookDelivery]:
    """Write one delivery of ``event`` per target that wants it; ``data`` is the public job the body
    carries (a state change's as it was recorded, ``event_id`` its ``JobEvent``). ``endpoints``: the
    owner's enabled endpoints when the caller read them for many jobs at once (:func:`endpoints_of`)."""
    targets = _targets(session, job, event, endpoints)
    now = now or utcnow()
    rows = []
    for url, endpoint_id in targets:
        delivery_id = DELIVERY_ID_PREFIX + new_ulid()
        rows.append(
            WebhookDelivery(
                id=delivery_id,
                job_id=job.id,
                endpoint_id=endpoint_id,
                url=url,
                event_type=event.value,
                payload=event_body(data, event, delivery_id=delivery_id, created_at=now),
                event_id=event_id,
                status=DeliveryStatus.PENDING.value,
                attempts=0,
                created_at=now,
                next_attempt_at=now,
            )
        )
    session.add_all(rows)
    return rows


def progress_subscribed(*, session: Session, job_id: str) -> bool:
    """Whether anyone asked for ``video.progress`` of this job (checked once per render)."""
    job = session.get(Job, job_id)
    return job is not None and bool(_targets(session, job, WebhookEvent.PROGRESS))


def add_progress_event(*, session: Session, job_id: str) -> list[WebhookDelivery]:
    job = session.get(Job, job_id)
    if job is None:
        return []
    data = VideoPublic.read(session=session, job=job).model_dump(mode="json")
    return add_deliveries(session=session, job=job, event=WebhookEvent.PROGRESS, data=data)


def relay_webhooks(
    *, session_factory: sessionmaker[Session], publisher: WebhookPublisher, settings: Settings, batch: int = 100
) -> int:
    """Publish due deliveries to the webhooks queue; return how many went out.

    A row is published when its attempt is due and no message was sent for it yet, or when the
    message sent for it more than ``redispatch_after_s`` ago vanished from the broker.
    """
    published = 0
    now = utcnow()
    lost_before = now - timedelta(seconds=settings.redispatch_after_s)
    with session_scope(session_factory) as session:
        bound_idle_transaction(session)  # a frozen relay does not keep these rows from the others
        rows = session.scalars(
            select(WebhookDelivery)
            .where(
                WebhookDelivery.status == DeliveryStatus.PENDING.value,
                WebhookDelivery.next_attempt_at <= now,
                or_(WebhookDelivery.enqueued_at.is_(None), WebhookDelivery.enqueued_at < lost_before),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(batch)
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            if row.enqueued_at is not None and publisher.webhook_in_flight(row.id, row.attempts):
                continue  # still waiting in the queue (workers busy): not lost
            try:
                publisher.publish_webhook(row.id, row.attempts)
            except Exception as exc:  # the broker is down: the row stays due, the next pass retries
                log.warning("could not publish webhook delivery %s: %s", row.id, exc)
                break
            row.enqueued_at = now
            published += 1
    return published
