"""One delivery attempt: claim the row, check the target again, POST the signed body, record what happened.

2xx is success. Anything else (3xx included: redirects are not followed), a timeout or a connection
error is a failure, retried after the next wait of ``webhook_retry_schedule_s`` (jittered, and no
sooner than the receiver's ``Retry-After``) until the schedule runs out. 410 Gone disables the
endpoint at once; an endpoint that keeps failing for ``webhook_disable_after_s`` is disabled too.
A target that now resolves to a refused address is not contacted and the delivery fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from jobs import metrics
from jobs.db import session_scope, utcnow
from jobs.logs import job_context
from jobs.models import ApiKey, Job, WebhookAttempt, WebhookDelivery
from jobs.settings import Settings
from jobs.states import JobStatus
from jobs.storage import Storage
from jobs.webhooks.endpoints import (
    ENDPOINT_DELETED,
    default_secret,
    disable_endpoint,
    is_job_url_delivery,
    signing_secrets,
)
from jobs.webhooks.outbox import DeliveryStatus, WebhookEvent
from jobs.webhooks.signing import webhook_headers
from jobs.webhooks.slots import ClientSlots, MemoryClientSlots
from jobs.webhooks.targets import Target, TargetRefused, check_target

log = logging.getLogger(__name__)

JITTER = 0.2  # each wait is drawn from ±20% of the schedule's value, so retries of many jobs spread out
MAX_RETRY_AFTER_S = 24 * 3600.0
SNIPPET_BYTES = 1024
LEASE_MARGIN_S = 30.0  # an attempt whose worker died is retried this long after its timeout


class AttemptOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    RETRY_SCHEDULED = "retry_scheduled"
    FAILED = "failed"  # given up: retries exhausted, 410, refused target or disabled endpoint
    SKIPPED = "skipped"  # not pending or not due: a duplicate or stale message
    DEFERRED = "deferred"  # its client had its cap of attempts in flight: tried again shortly, not counted


# Embedded mode and direct calls: this process alone sends (a worker passes its shared slots).
LOCAL_SLOTS = MemoryClientSlots()
DEFER_S = 1.0  # a deferred delivery is due again after this (the relay republishes it)


@dataclass(frozen=True)
class PreparedAttempt:
    delivery_id: str
    job_id: str
    owner_id: int
    url: str
    body: bytes
    secrets: list[str]


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None = None
    latency_ms: int | None = None
    response_snippet: str | None = None
    error: str | None = None
    retry_after_s: float | None = None
    refused: bool = False

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def retry_delay(attempts: int, schedule: list[float], retry_after_s: float | None = None) -> float | None:
    """Seconds to wait after the ``attempts``-th failed attempt, or None when the schedule is spent."""
    if attempts > len(schedule):
        return None
    delay = schedule[attempts - 1] * random.uniform(1 - JITTER, 1 + JITTER)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))
    return delay


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as seconds from now: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _body(delivery: WebhookDelivery, job: Job | None, storage: Storage | None, settings: Settings) -> bytes:
    """The stored event body; a completion gets result URLs presigned now, so they are fresh on every retry."""
    if delivery.event_type != WebhookEvent.COMPLETED.value or job is None or storage is None:
        return delivery.payload.encode()
    if job.status != JobStatus.COMPLETED.value or not job.video_key:
        return delivery.payload.encode()  # deleted or expired since: nothing to link to
    event = json.loads(delivery.payload)
    expiry = timedelta(seconds=settings.presign_expiry_s)
    urls = {
        "video": storage.presigned_url(job.video_key, expiry),
        "thumbnail": storage.presigned_url(job.thumbnail_key, expiry) if job.thumbnail_key else None,
        "expires_at": int((utcnow() + expiry).timestamp()),
    }
    event["data"]["urls"] = urls
    return json.dumps(event, separators=(",", ":")).encode()


def claim_attempt(
    *, session: Session, delivery_id: str, settings: Settings, storage: Storage | None
) -> PreparedAttempt | None:
    """Lock a due, pending delivery and lease it for one attempt; None if there is nothing to do."""
    # Wait for the lock rather than skip: the relay that published this message may still hold the row.
    delivery = session.scalar(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id).with_for_update())
    now = utcnow()
    if delivery is None or delivery.status != DeliveryStatus.PENDING.value:
        return None
    if delivery.next_attempt_at is not None and delivery.next_attempt_at > now:
        return None  # another attempt holds the lease, or this message is older than a reschedule
    job = session.get(Job, delivery.job_id)
    endpoint = delivery.endpoint
    if endpoint is not None:
        if endpoint.disabled_at is not None:
            delivery.status = DeliveryStatus.FAILED.value
            delivery.last_error = f"endpoint disabled: {endpoint.disabled_reason}"
            return None
        secrets = signing_secrets(endpoint, now)
    else:
        if not is_job_url_delivery(session, delivery):  # its endpoint was deleted meanwhile
            delivery.status = DeliveryStatus.FAILED.value
            delivery.last_error = ENDPOINT_DELETED
            return None
        owner = session.get(ApiKey, job.owner_id) if job is not None else None
        if owner is None:
            return None
        secrets = [default_secret(session=session, owner=owner)]
    # The lease: a duplicate message finds the attempt not due; if this worker dies, the attempt is
    # due again once the lease runs out, and the relay publishes it.
    delivery.next_attempt_at = now + timedelta(seconds=settings.webhook_timeout_s + LEASE_MARGIN_S)
    delivery.enqueued_at = None
    return PreparedAttempt(
        delivery_id=delivery.id,
        job_id=delivery.job_id,
        owner_id=job.owner_id if job is not None else 0,
        url=delivery.url,
        body=_body(delivery, job, storage, settings),
        secrets=secrets,
    )


def _pinned_request(target: Target) -> tuple[str, dict[str, str], dict[str, str]]:
    """URL, extra headers and httpx extensions that connect to the checked address under the URL's name."""
    if target.address is None:  # an allow-listed host: connect by name
        return target.url, {}, {}
    parts = urlsplit(target.url)
    ip = f"[{target.address}]" if ":" in target.address else target.address
    url = urlunsplit((parts.scheme, f"{ip}:{target.port}", parts.path or "/", parts.query, ""))
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return url, {"host": parts.netloc}, extensions


def send_attempt(target: Target, *, body: bytes, headers: dict[str, str], timeout_s: float) -> AttemptResult:
    """POST once, all of it within ``timeout_s``: connecting, sending, the response's headers and at
    most ``SNIPPET_BYTES`` of its body. httpx's own timeouts apply per operation (a receiver that
    drips one byte every few seconds would never trip them), so the whole attempt runs under one
    deadline that cancels it wherever it is. Never raises for network trouble (it becomes the
    attempt's ``error``). An allow-listed target's answer body is not kept: those hosts are private,
    and the delivery log must not become a way to read them."""
    started = time.perf_counter()
    try:
        return asyncio.run(
            asyncio.wait_for(_post(target, body=body, headers=headers, timeout_s=timeout_s), timeout=timeout_s)
        )
    except TimeoutError:
        error = f"timed out after {timeout_s:g} s"
    except httpx.TimeoutException:
        error = f"timed out after {timeout_s:g} s"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:1000]
    return AttemptResult(latency_ms=round((time.perf_counter() - started) * 1000), error=error)


async def _post(target: Target, *, body: bytes, headers: dict[str, str], timeout_s: float) -> AttemptResult:
    url, extra_headers, extensions = _pinned_request(target)
    started = time.perf_counter()
    # trust_env=False: no proxy from the environment may route the request somewhere else.
    async with (
        httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False) as client,
        client.stream(
            "POST", url, content=body, headers={**headers, **extra_headers}, extensions=extensions
        ) as response,
    ):
        snippet = b""
        if target.address is not None:  # never read back what an allow-listed (private) host answers
            async for chunk in response.aiter_bytes():
                snippet += chunk
                if len(snippet) >= SNIPPET_BYTES:
                    break
        return AttemptResult(
            status_code=response.status_code,
            latency_ms=round((time.perf_counter() - started) * 1000),
            response_snippet=snippet[:SNIPPET_BYTES].decode("utf-8", errors="replace") if target.address else None,
            retry_after_s=parse_retry_after(response.headers.get("retry-after"), utcnow()),
        )


def _count_attempt(result: AttemptResult) -> None:
    if result.refused:
        label = "refused"
    elif result.succeeded:
        label = "success"
    else:
        label = "http_error" if result.status_code is not None else "error"
    metrics.WEBHOOK_ATTEMPTS.labels(label).inc()
    if result.latency_ms is not None:
        metrics.WEBHOOK_SECONDS.observe(result.latency_ms / 1000)


def record_attempt(*, session: Session, delivery_id: str, result: AttemptResult, settings: Settings) -> AttemptOutcome:
    """Append the attempt to the log and decide what happens next."""
    delivery = session.scalar(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id).with_for_update())
    if delivery is None:
        return AttemptOutcome.FAILED  # the job (or endpoint) was deleted meanwhile
    now = utcnow()
    delivery.attempts += 1
    delivery.last_attempt_at = now
    endpoint = delivery.endpoint
    outcome: AttemptOutcome
    if result.succeeded:
        delivery.status, delivery.next_attempt_at, delivery.last_error = DeliveryStatus.SUCCEEDED.value, None, None
        if endpoint is not None:
            endpoint.failing_since = None
        outcome = AttemptOutcome.SUCCEEDED
    else:
        delivery.last_error = result.error or f"HTTP {result.status_code}"
        delay: float | None = None
        if result.status_code == 410:  # the receiver asks never to be called again
            if endpoint is not None:
                disable_endpoint(endpoint, reason="the endpoint answered 410 Gone", now=now)
        elif not result.refused:  # a refused target is policy, not a receiver's hiccup: no retries
            delay = retry_delay(delivery.attempts, settings.webhook_retry_schedule_s, result.retry_after_s)
            if endpoint is not None:
                endpoint.failing_since = endpoint.failing_since or now
                if (now - endpoint.failing_since).total_seconds() >= settings.webhook_disable_after_s:
                    disable_endpoint(endpoint, reason=f"failing since {endpoint.failing_since.isoformat()}", now=now)
                    delay = None
        if delay is None:
            delivery.status, delivery.next_attempt_at = DeliveryStatus.FAILED.value, None
            outcome = AttemptOutcome.FAILED
        else:
            delivery.next_attempt_at = now + timedelta(seconds=delay)
            outcome = AttemptOutcome.RETRY_SCHEDULED
    metrics.after_commit(session, lambda: _count_attempt(result))
    session.add(
        WebhookAttempt(
            delivery_id=delivery.id,
            attempted_at=now,
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            response_snippet=result.response_snippet,
            error=result.error,
            next_attempt_at=delivery.next_attempt_at,
        )
    )
    return outcome


def deliver(
    delivery_id: str,
    *,
    session_factory: sessionmaker[Session],
    settings: Settings,
    storage: Storage | None = None,
    slots: ClientSlots = LOCAL_SLOTS,
) -> AttemptOutcome:
    """Make one attempt of a delivery (what the ``vidq.deliver_webhook`` task runs). ``slots`` caps
    the attempts in flight per client (``jobs.webhooks.slots``): at the cap it is deferred."""
    with session_scope(session_factory) as session:
        prepared = claim_attempt(session=session, delivery_id=delivery_id, settings=settings, storage=storage)
    if prepared is None:
        return AttemptOutcome.SKIPPED
    lease = slots.acquire(prepared.owner_id, settings.webhook_client_concurrency)
    if lease is None:
        with session_scope(session_factory) as session:
            defer(session=session, delivery_id=delivery_id)
        return AttemptOutcome.DEFERRED
    try:
        with job_context(prepared.job_id):
            return _attempt(prepared, session_factory=session_factory, settings=settings)
    finally:
        slots.release(prepared.owner_id, lease)


def defer(*, session: Session, delivery_id: str) -> None:
    """Give back a claimed attempt without making it: due again in ``DEFER_S``, republished by the relay."""
    delivery = session.scalar(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id).with_for_update())
    if delivery is not None and delivery.status == DeliveryStatus.PENDING.value:
        delivery.next_attempt_at = utcnow() + timedelta(seconds=DEFER_S)
        delivery.enqueued_at = None


def _attempt(
    prepared: PreparedAttempt, *, session_factory: sessionmaker[Session], settings: Settings
) -> AttemptOutcome:
    delivery_id = prepared.delivery_id
    try:
        target = check_target(prepared.url, allowed_hosts=settings.webhook_allowed_host_set)
    except TargetRefused as exc:
        result = AttemptResult(error=f"target refused: {exc.message}", refused=True)
    else:
        timestamp = int(time.time())
        headers = webhook_headers(prepared.secrets, prepared.delivery_id, timestamp, prepared.body)
        result = send_attempt(target, body=prepared.body, headers=headers, timeout_s=settings.webhook_timeout_s)

    with session_scope(session_factory) as session:
        outcome = record_attempt(session=session, delivery_id=delivery_id, result=result, settings=settings)
    log.info(
        "webhook %s to %s: %s (%s)",
        delivery_id,
        urlsplit(prepared.url).netloc,
        outcome.value,
        result.status_code or result.error,
    )
    return outcome
