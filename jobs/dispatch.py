"""Getting jobs to workers without losing any: the transactional outbox, its relay, and the sweeper.

PostgreSQL is the source of truth. A job change that needs a message writes a ``DispatchOutbox`` row
in the same transaction; the relay publishes pending rows to the broker. The sweeper repairs what
the broker can lose: a queued job whose message vanished (Redis flushed or restarted) is published
again, and a running job whose worker stopped heart-beating is put back in the queue (or failed once
its attempts are used up). Duplicate messages are harmless: a worker renders only a job it can move
from ``queued`` to ``in_progress`` under a row lock. Each pass also publishes due webhook
deliveries (``jobs.webhooks.outbox``) to the ``webhooks`` queue.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import redis
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from jobs.attempts import AttemptOutcome, close_attempt
from jobs.broker import RENDER_TASK, WEBHOOK_QUEUE, WEBHOOK_TASK
from jobs.db import session_scope, utcnow
from jobs.models import DispatchOutbox, Job
from jobs.settings import Settings
from jobs.states import JobStatus
from jobs.storage import Storage
from jobs.transitions import fail, requeue
from jobs.webhooks.outbox import WebhookPublisher, add_job_event, relay_webhooks

log = logging.getLogger(__name__)


class DispatchMarkers(Protocol):
    """Remembers, in the broker's own store, which jobs have a message in flight.

    A marker lives exactly as long as the broker's memory: if Redis is flushed or restarted, message
    and marker vanish together, and the sweeper sees a queued job with no marker.
    """

    def mark(self, job_id: str, ttl_s: int | None = None) -> None: ...

    def is_marked(self, job_id: str) -> bool: ...


class RedisDispatchMarkers:
    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s

    def mark(self, job_id: str, ttl_s: int | None = None) -> None:
        self.client.set(f"vidq:dispatched:{job_id}", "1", ex=ttl_s or self.ttl_s)

    def is_marked(self, job_id: str) -> bool:
        return bool(self.client.exists(f"vidq:dispatched:{job_id}"))


class MemoryDispatchMarkers:
    """Embedded mode: the in-process broker forgets everything on restart, and so does this set."""

    def __init__(self) -> None:
        self._marked: set[str] = set()
        self._lock = threading.Lock()

    def mark(self, job_id: str, ttl_s: int | None = None) -> None:
        with self._lock:
            self._marked.add(job_id)

    def is_marked(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._marked


class Publisher(Protocol):
    def publish(self, job_id: str, queue: str, *, marker_ttl_s: int | None = None) -> None: ...


class CeleryPublisher:
    def __init__(self, app: Celery, markers: DispatchMarkers) -> None:
        self.app = app
        self.markers = markers

    def publish(self, job_id: str, queue: str, *, marker_ttl_s: int | None = None) -> None:
        self.app.send_task(RENDER_TASK, args=[job_id], queue=queue)
        self.markers.mark(job_id, marker_ttl_s)

    def publish_webhook(self, delivery_id: str, attempt: int) -> None:
        self.app.send_task(WEBHOOK_TASK, args=[delivery_id], queue=WEBHOOK_QUEUE)
        self.markers.mark(f"{delivery_id}#{attempt}")

    def webhook_in_flight(self, delivery_id: str, attempt: int) -> bool:
        return self.markers.is_marked(f"{delivery_id}#{attempt}")


def add_to_outbox(*, session: Session, job: Job) -> DispatchOutbox:
    """Record that ``job`` needs a message; call inside the transaction that changed the job."""
    row = DispatchOutbox(job=job, queue=job.queue, created_at=utcnow())
    session.add(row)
    return row


def relay_outbox(
    *,
    session_factory: sessionmaker[Session],
    publisher: Publisher,
    batch: int = 100,
    route: Callable[[Job], str | None] | None = None,
    direct_marker_ttl_s: int | None = None,
) -> int:
    """Publish pending outbox rows; return how many went out. Stops at the first broker error.

    ``route`` may send a job to another queue than its row's (``jobs.affinity``: a worker's own
    queue); such a message's marker lives ``direct_marker_ttl_s``, after which the sweeper
    publishes the job again to its shared queue if it is still waiting.
    """
    published = 0
    with session_scope(session_factory) as session:
        rows = session.scalars(
            select(DispatchOutbox)
            .where(DispatchOutbox.published_at.is_(None))
            .order_by(DispatchOutbox.id)
            .limit(batch)
            .with_for_update(skip_locked=True)  # concurrent relays share the work, never double it
        ).all()
        for row in rows:
            job = session.get(Job, row.job_id)
            direct = route(job) if route is not None and job is not None else None
            try:
                if direct is not None:
                    publisher.publish(row.job_id, direct, marker_ttl_s=direct_marker_ttl_s)
                else:
                    publisher.publish(row.job_id, row.queue)
            except Exception as exc:  # the broker is down: keep the row, try on the next pass
                row.publish_attempts += 1
                row.last_error = f"{type(exc).__name__}: {exc}"[:1000]
                log.warning("outbox relay could not publish %s: %s", row.job_id, exc)
                break
            now = utcnow()
            row.published_at = now
            row.publish_attempts += 1
            if job is not None:
                job.dispatched_at = now
            published += 1
    return published


@dataclass
class SweepReport:
    published: int = 0
    requeued_lost: int = 0
    failed_lost: int = 0
    redispatched: int = 0
    expired: int = 0
    webhooks_published: int = 0


def _requeue_lost_workers(session: Session, settings: Settings, now: datetime, report: SweepReport) -> None:
    stale_before = now - timedelta(seconds=settings.heartbeat_timeout_s)
    lost = session.scalars(
        select(Job)
        .where(Job.status == JobStatus.IN_PROGRESS.value, Job.heartbeat_at < stale_before)
        .with_for_update(skip_locked=True)
    ).all()
    for job in lost:
        message = f"worker {job.worker_id} stopped responding during attempt {job.attempts}"
        close_attempt(session=session, job=job, outcome=AttemptOutcome.LOST, error=message, now=now)
        if job.attempts >= settings.max_attempts:
            fail(job, code="worker_lost", message=f"{message}; no attempts left", now=now)
            report.failed_lost += 1
        else:
            requeue(job, reason=message)
            add_to_outbox(session=session, job=job)
            report.requeued_lost += 1
        add_job_event(session=session, job=job, now=now)
        log.warning("job %s: %s", job.id, message)


def _redispatch_lost_messages(
    session: Session, settings: Settings, markers: DispatchMarkers, now: datetime, report: SweepReport
) -> None:
    dispatched_before = now - timedelta(seconds=settings.redispatch_after_s)
    candidates = session.scalars(
        select(Job)
        .where(Job.status == JobStatus.QUEUED.value, Job.dispatched_at < dispatched_before)
        .with_for_update(skip_locked=True)
    ).all()
    for job in candidates:
        if not markers.is_marked(job.id):
            add_to_outbox(session=session, job=job)
            job.dispatched_at = None  # pending again until the relay publishes it
            report.redispatched += 1
            log.warning("job %s: its broker message is gone, publishing again", job.id)


def _expire_results(session: Session, storage: Storage, now: datetime, report: SweepReport, batch: int = 100) -> None:
    expired = session.scalars(
        select(Job)
        .where(Job.status == JobStatus.COMPLETED.value, Job.expires_at < now, Job.video_key.is_not(None))
        .limit(batch)
        .with_for_update(skip_locked=True)
    ).all()
    for job in expired:
        for key in (job.video_key, job.thumbnail_key):
            if key:
                storage.delete(key)
        job.video_key = job.thumbnail_key = None
        report.expired += 1


def sweep(
    *,
    session_factory: sessionmaker[Session],
    publisher: Publisher,
    markers: DispatchMarkers,
    settings: Settings,
    storage: Storage | None = None,
    webhooks: WebhookPublisher | None = None,
) -> SweepReport:
    """One pass of repairs (and, given storage, deletion of expired results), then one relay pass
    (and, given a webhook publisher, one pass publishing due webhook deliveries)."""
    report = SweepReport()
    now = utcnow()
    with session_scope(session_factory) as session:
        _requeue_lost_workers(session, settings, now, report)
    with session_scope(session_factory) as session:
        _redispatch_lost_messages(session, settings, markers, now, report)
    if storage is not None:
        with session_scope(session_factory) as session:
            _expire_results(session, storage, now, report)
    report.published = relay_outbox(session_factory=session_factory, publisher=publisher)
    if webhooks is not None:
        report.webhooks_published = relay_webhooks(
            session_factory=session_factory, publisher=webhooks, settings=settings
        )
    return report


class Sweeper:
    """Runs :func:`sweep` every ``settings.sweep_interval_s`` on a daemon thread."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        publisher: Publisher,
        markers: DispatchMarkers,
        settings: Settings,
        storage: Storage | None = None,
        webhooks: WebhookPublisher | None = None,
    ) -> None:
        self._kwargs = dict(
            session_factory=session_factory,
            publisher=publisher,
            markers=markers,
            settings=settings,
            storage=storage,
            webhooks=webhooks,
        )
        self._interval = settings.sweep_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vidq-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                sweep(**self._kwargs)  # type: ignore[arg-type]
            except Exception:  # the database may be restarting; the next pass tries again
                log.exception("sweep failed")


def make_markers(settings: Settings) -> DispatchMarkers:
    if settings.redis_url:
        return RedisDispatchMarkers(redis.Redis.from_url(settings.redis_url), ttl_s=settings.visibility_timeout_s)
    return MemoryDispatchMarkers()


def make_sweeper(
    settings: Settings, app: Celery, session_factory: sessionmaker[Session], storage: Storage | None = None
) -> Sweeper:
    markers = make_markers(settings)
    publisher = CeleryPublisher(app, markers)
    return Sweeper(
        session_factory=session_factory,
        publisher=publisher,
        markers=markers,
        settings=settings,
        storage=storage,
        webhooks=publisher,
    )
