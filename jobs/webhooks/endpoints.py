"""Client-facing webhook operations: endpoints, the default secret, a job's deliveries and replays.

Every lookup is scoped to the owner, like jobs: another client's endpoint or delivery is a 404.
Secrets are stored so they can sign, but only returned when created or rotated (an endpoint's) or
when asked for explicitly (the default one); they are never logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, selectinload

from jobs.crud import MAX_PAGE, get_job
from jobs.db import utcnow
from jobs.errors import Conflict, InvalidParameter, NotFound
from jobs.ids import new_ulid
from jobs.models import ApiKey, Job, WebhookDelivery, WebhookEndpoint
from jobs.pages import SortOrder, keyset_page
from jobs.webhooks.outbox import DeliveryStatus, check_event_filter
from jobs.webhooks.signing import new_secret
from jobs.webhooks.targets import check_target

ENDPOINT_ID_PREFIX = "we_"
MAX_ENDPOINTS = 20
ENDPOINT_DELETED = "endpoint deleted"
ROTATION_GRACE = timedelta(hours=24)  # the previous secret keeps signing (a second signature) this long


def default_secret(*, session: Session, owner: ApiKey) -> str:
    """The owner's secret for job-level ``webhook_url`` deliveries, created on first use."""
    if owner.webhook_secret is None:
        # Two first uses may race: only the first write lands, and both read back the winner.
        session.execute(
            update(ApiKey)
            .where(ApiKey.id == owner.id, ApiKey.webhook_secret.is_(None))
            .values(webhook_secret=new_secret())
        )
        session.refresh(owner, attribute_names=["webhook_secret"])
    assert owner.webhook_secret is not None
    return owner.webhook_secret


def signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The secrets that sign for ``endpoint`` now: the current one, plus the previous one mid-rotation."""
    found = [endpoint.secret]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > now:
        found.append(endpoint.previous_secret)
    return found


@dataclass(frozen=True)
class EndpointWithSecret:
    endpoint: WebhookEndpoint
    secret: str


def create_endpoint(
    *,
    session: Session,
    owner: ApiKey,
    url: str,
    events: list[str] | None,
    description: str,
    allowed_hosts: frozenset[str],
) -> EndpointWithSecret:
    check_target(url, allowed_hosts=allowed_hosts, param="url")
    events = check_event_filter(events, param="events")
    # The owner's key row, locked: concurrent creates of one client count one after another, so
    # the cap holds (a count alone lets 40 parallel creates all see 19).
    session.execute(select(ApiKey.id).where(ApiKey.id == owner.id).with_for_update())
    count = session.scalar(
        select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.owner_id == owner.id)
    )
    if (count or 0) >= MAX_ENDPOINTS:
        raise InvalidParameter(f"a client may register at most {MAX_ENDPOINTS} endpoints", param="url")
    secret = new_secret()
    endpoint = WebhookEndpoint(
        id=ENDPOINT_ID_PREFIX + new_ulid(),
        owner_id=owner.id,
        url=url,
        events=events,
        description=description,
        secret=secret,
        created_at=utcnow(),
    )
    session.add(endpoint)
    session.flush()
    return EndpointWithSecret(endpoint, secret)


def list_endpoints(
    *, session: Session, owner: ApiKey, limit: int = 20, after: str | None = None, order: SortOrder = "desc"
) -> tuple[list[WebhookEndpoint], bool]:
    """Newest first (like ``/v1/videos``); returns (page, has_more)."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidParameter(f"limit must be between 1 and {MAX_PAGE}", param="limit")
    query = select(WebhookEndpoint).where(WebhookEndpoint.owner_id == owner.id)
    return keyset_page(session, query, WebhookEndpoint.id, limit=limit, after=after, order=order)


def get_endpoint(*, session: Session, owner: ApiKey, endpoint_id: str, for_update: bool = False) -> WebhookEndpoint:
    """The owner's endpoint; ``for_update`` locks its row until the transaction ends (every change:
    two rotations at once must not both hand out a secret only one of them stores)."""
    query = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.owner_id == owner.id)
    endpoint = session.scalar(query.with_for_update() if for_update else query)
    if endpoint is None:
        raise NotFound(f"no webhook endpoint with id {endpoint_id!r}", param="endpoint_id")
    return endpoint


def delete_endpoint(*, session: Session, owner: ApiKey, endpoint_id: str) -> None:
    """Delete the endpoint. Its deliveries stay (the job's history; their ``endpoint_id`` becomes
    NULL); those not sent yet are failed with "endpoint deleted", never sent elsewhere."""
    endpoint = get_endpoint(session=session, owner=owner, endpoint_id=endpoint_id, for_update=True)
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.status == DeliveryStatus.PENDING.value)
        .values(status=DeliveryStatus.FAILED.value, last_error=ENDPOINT_DELETED)
    )
    session.delete(endpoint)


def rotate_secret(*, session: Session, owner: ApiKey, endpoint_id: str) -> EndpointWithSecret:
    """A new secret signs from now on; the old one adds a second signature for ``ROTATION_GRACE``."""
    endpoint = get_endpoint(session=session, owner=owner, endpoint_id=endpoint_id, for_update=True)
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_expires_at = utcnow() + ROTATION_GRACE
    endpoint.secret = new_secret()
    return EndpointWithSecret(endpoint, endpoint.secret)


def enable_endpoint(*, session: Session, owner: ApiKey, endpoint_id: str) -> WebhookEndpoint:
    """Turn a disabled endpoint back on; only events from now on are sent (replay older ones by hand)."""
    endpoint = get_endpoint(session=session, owner=owner, endpoint_id=endpoint_id, for_update=True)
    endpoint.disabled_at = endpoint.disabled_reason = endpoint.failing_since = None
    return endpoint


def is_job_url_delivery(session: Session, delivery: WebhookDelivery) -> bool:
    """True when a delivery without an endpoint is to its job's own ``webhook_url``; False when its
    endpoint was deleted (such a delivery must never be signed with the default secret and sent)."""
    if delivery.endpoint_id is not None:
        return False
    job = session.get(Job, delivery.job_id)
    return job is not None and job.webhook_url == delivery.url


def disable_endpoint(endpoint: WebhookEndpoint, *, reason: str, now: datetime) -> None:
    if endpoint.disabled_at is None:
        endpoint.disabled_at = now
        endpoint.disabled_reason = reason


def list_deliveries(*, session: Session, owner: ApiKey, job_id: str, order: SortOrder = "asc") -> list[WebhookDelivery]:
    """A job's deliveries, oldest first (``order="desc"``: newest first), with every attempt."""
    get_job(session=session, owner=owner, job_id=job_id)
    ordered = WebhookDelivery.id.asc() if order == "asc" else WebhookDelivery.id.desc()
    return list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id)
            .order_by(ordered)
            .options(selectinload(WebhookDelivery.attempt_log))
        )
    )


def redeliver(*, session: Session, owner: ApiKey, job_id: str, delivery_id: str) -> WebhookDelivery:
    """Replay one delivery now, with the same ``webhook-id`` (receivers that already have it ignore it).

    A replay is one immediate attempt; if it fails, retries follow only while the schedule has
    steps left.
    """
    get_job(session=session, owner=owner, job_id=job_id)
    delivery = session.scalar(
        select(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.job_id == job_id)
        .with_for_update()
    )
    if delivery is None:
        raise NotFound(f"no webhook delivery {delivery_id!r} for video {job_id}", param="delivery_id")
    if delivery.endpoint_id is None and not is_job_url_delivery(session, delivery):
        raise Conflict(f"delivery {delivery_id}'s webhook endpoint was deleted", code="endpoint_deleted")
    if delivery.endpoint is not None and delivery.endpoint.disabled_at is not None:
        raise Conflict(
            f"webhook endpoint {delivery.endpoint.id} is disabled; enable it first", code="endpoint_disabled"
        )
    delivery.status = DeliveryStatus.PENDING.value
    delivery.next_attempt_at = utcnow()
    delivery.enqueued_at = None
    delivery.last_error = None
    return delivery
