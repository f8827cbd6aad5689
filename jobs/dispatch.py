"""Getting jobs to workers without losing any: the broker side of the relay, and the sweeper.

PostgreSQL is the source of truth. A state change appends a ``JobEvent`` in its transaction; the
relay (``jobs.relay``) turns a queued job's event into a ``DispatchOutbox`` row and publishes
pending rows to the broker. The sweeper repairs what the broker can lose, deciding from the
database alone:

- **claimed or published again**: a job still queued ``VIDQ_REDISPATCH_AFTER_S`` after its last
  publish was not claimed, whatever happened to its message (Redis restarted, a worker took it and
  died before claiming, it was published as the only worker died): it is published again, at most
  once per interval. A job requeued with back-off after a transient failure is published when its
  ``retry_at`` has passed.
- **running or taken back**: a running job whose worker is gone is put back in the queue (or failed
  once its attempts are used up). Gone means the worker's own status record says so (its heartbeats
  stopped, or it no longer runs this job) while the job row's heartbeat is a few beats old; without a
  status record, the row heartbeat's ``VIDQ_HEARTBEAT_TIMEOUT_S`` decides.

Its state changes go through ``jobs.lifecycle`` like any other, so they reach live streams and
webhooks. Duplicate messages are harmless: a worker renders only a job it can move from ``queued``
to ``in_progress`` under a row lock. The ``Sweeper`` also runs the process's relay, on a thread of
its own: a pass woken by each local commit that appended events, on every kick, and every sweep
interval.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import redis
from celery import Celery
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from jobs import depths, lifecycle
from jobs.affinity import affinity_router
from jobs.attempts import AttemptOutcome
from jobs.broker import RENDER_TASK, WEBHOOK_QUEUE, WEBHOOK_TASK, redis_client
from jobs.db import session_scope, utcnow
from jobs.events import EventBus, NullEventBus, make_event_bus
from jobs.models import Job
from jobs.relay import Publisher, Relay, add_to_outbox, run_after_commit
from jobs.settings import Settings
from jobs.states import JobStatus
from jobs.storage import Storage
from jobs.task_messages import redis_task_writer
from jobs.webhooks.outbox import WebhookPublisher
from jobs.workers import WorkerRegistry, WorkerStatus, make_worker_registry

log = logging.getLogger(__name__)


# A status record whose heartbeat is this many intervals old (and at least LOST_AFTER_MIN_S) belongs to
# a dead worker; a job row heartbeat that old is not a claim the record has not caught up with yet.
LOST_AFTER_BEATS = 3
LOST_AFTER_MIN_S = 2.0  # a busy host can delay a beat or two; a dead worker is still noticed in seconds


def lost_after_s(settings: Settings) -> float:
    """How long a worker's status record may go without a beat before its jobs are taken back."""
    return max(LOST_AFTER_BEATS * settings.heartbeat_interval_s, LOST_AFTER_MIN_S)


class DispatchMarkers(Protocol):
    """Remembers, in the broker's own store, which webhook deliveries have a message in flight.

    A marker lives exactly as long as the broker's memory: if Redis is flushed or restarted, message
    and marker vanish together, and the webhook relay publishes the delivery again.
    """

    def mark(self, key: str) -> None: ...

    def is_marked(self, key: str) -> bool: ...


class RedisDispatchMarkers:
    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s

    def mark(self, key: str) -> None:
        self.client.set(f"vidq:dispatched:{key}", "1", ex=self.ttl_s)

    def is_marked(self, key: str) -> bool:
        return bool(self.client.exists(f"vidq:dispatched:{key}"))


class MemoryDispatchMarkers:
    """Embedded mode: the in-process broker forgets everything on restart, and so does this set."""

    def __init__(self) -> None:
        self._marked: set[str] = set()
        self._lock = threading.Lock()

    def mark(self, key: str) -> None:
        with self._lock:
            self._marked.add(key)

    def is_marked(self, key: str) -> bool:
        with self._lock:
            return key in self._marked


class CeleryPublisher:
    def __init__(self, app: Celery, markers: DispatchMarkers) -> None:
        self.app = app
        self.markers = markers
        # Render messages straight into a Redis broker (what send_task writes, without its CPU); None
        # for other brokers, which take send_task.
        self.writer = redis_task_writer(app, redis_client, RENDER_TASK)

    def publish(self, job_id: str, queue: str) -> None:
        self.app.send_task(RENDER_TASK, args=[job_id], queue=queue)

    def publish_many(self, messages: Sequence[tuple[str, str]]) -> None:
        """Render messages for ``(job_id, queue)`` pairs in one Redis round trip: written directly
        (``jobs.task_messages``) on a Redis broker, else on one producer where kombu batches
        publishes (``Producer.batch``, kombu 5.7+; one by one before it).

        The relay publishes an outbox batch at once: a round trip per message cost its thread a GIL
        hand-off each, and under a full load of submits the outbox fell ever further behind. A
        failure raises, and the caller counts every message as unsent (some may have gone: a render
        message is idempotent, the claim takes a job once)."""
        if self.writer is not None:
            self.writer.write([([job_id], queue) for job_id, queue in messages])
            return
        with self.app.producer_or_acquire() as producer:
            batch = getattr(producer, "batch", None)
            with batch() if batch is not None else contextlib.nullcontext():
                for job_id, queue in messages:
                    self.app.send_task(RENDER_TASK, args=[job_id], queue=queue, producer=producer)

    def publish_webhook(self, delivery_id: str, attempt: int) -> None:
        self.app.send_task(WEBHOOK_TASK, args=[delivery_id], queue=WEBHOOK_QUEUE)
        self.markers.mark(f"{delivery_id}#{attempt}")

    def webhook_in_flight(self, delivery_id: str, attempt: int) -> bool:
        return self.markers.is_marked(f"{delivery_id}#{attempt}")


@dataclass
class SweepReport:
    events: int = 0  # state changes fanned out by the relay pass
    published: int = 0
    requeued_lost: int = 0
    failed_lost: int = 0
    redispatched: int = 0
    expired: int = 0
    webhooks_published: int = 0


# Rows one sweep pass locks per kind of repair: a backlog of thousands is worked through over several
# passes (oldest first), and each pass holds few locks for a short time. SKIP LOCKED: the sweepers of
# every API process and worker share the rows instead of waiting on each other.
SWEEP_BATCH = 200


def _worker_gone(job: Job, records: dict[str, WorkerStatus], lost_after_s: float, now: datetime) -> bool:
    """What the worker's own status record says: it stopped beating, or it runs another job (or none)."""
    record = records.get(job.worker_id or "")
    if record is None:
        return False  # no record (Redis restarted, or an embedded worker): the row heartbeat decides
    return record.is_lost(timeout_s=lost_after_s, now=now.timestamp()) or record.current_job != job.id


def _requeue_lost_workers(
    session: Session, settings: Settings, now: datetime, report: SweepReport, records: dict[str, WorkerStatus]
) -> None:
    stale_before = now - timedelta(seconds=settings.heartbeat_timeout_s)
    silent_s = lost_after_s(settings)
    quiet_before = now - timedelta(seconds=min(silent_s, settings.heartbeat_timeout_s))
    candidates = session.scalars(
        select(Job)
        .where(Job.status == JobStatus.IN_PROGRESS.value, Job.heartbeat_at < quiet_before)
        .order_by(Job.id)
        .limit(SWEEP_BATCH)
        .with_for_update(skip_locked=True)
    ).all()
    if not candidates:
        return
    for job in candidates:
        timed_out = job.heartbeat_at is not None and job.heartbeat_at < stale_before
        if not (timed_out or _worker_gone(job, records, silent_s, now)):
            continue
        message = f"worker {job.worker_id} stopped responding during attempt {job.attempts}"
        if job.attempts >= settings.max_attempts:
            lifecycle.fail(
                session=session,
                job=job,
                code="worker_lost",
                message=f"{message}; no attempts left",
                attempt_outcome=AttemptOutcome.LOST,
                attempt_error=message,
                now=now,
            )
            report.failed_lost += 1
        else:
            lifecycle.requeue(
                session=session,
                job=job,
                reason=f"{message}; retrying",
                attempt_outcome=AttemptOutcome.LOST,
                attempt_error=message,
                now=now,
            )
            report.requeued_lost += 1
        log.warning("job %s: %s", job.id, message)


def _claimed_publishes(session: Session, queues: set[str], since: datetime) -> dict[str, datetime]:
    """Per queue, the latest publish time of a job claimed after ``since`` (from that publish)."""
    rows = session.execute(
        select(Job.queue, func.max(Job.dispatched_at))
        .where(
            Job.queue.in_(queues),
            Job.started_at > since,
            Job.dispatched_at.is_not(None),
            Job.started_at >= Job.dispatched_at,
        )
        .group_by(Job.queue)
    ).all()
    return {queue: latest for queue, latest in rows if latest is not None}


def _idle_since(records: dict[str, WorkerStatus], lost_after: float, now: datetime) -> dict[str, float]:
    """Per queue, the earliest time since which a live worker consuming it has run nothing (while it
    is idle, a message waiting in one of its queues is taken within moments)."""
    idle: dict[str, float] = {}
    for record in records.values():
        if record.idle_since is None or record.current_job is not None:
            continue
        if record.is_lost(timeout_s=lost_after, now=now.timestamp()):
            continue
        for queue in record.queues:
            idle[queue] = min(idle.get(queue, record.idle_since), record.idle_since)
    return idle


def _redispatch_unclaimed(
    session: Session,
    settings: Settings,
    now: datetime,
    report: SweepReport,
    records: dict[str, WorkerStatus] | None,
) -> None:
    """Publish again the queued jobs whose message must be gone, and those whose back-off is over.

    A job unclaimed ``VIDQ_REDISPATCH_AFTER_S`` after its last publish is published again when its
    message cannot still be waiting in the queue: a job of the same queue published after it has
    been claimed (queues are FIFO, so its message was taken, by a worker that died, or lost), or a
    live worker of its queue has been idle for the whole interval (it would have taken it). A job
    merely waiting behind a backlog is left alone, so a long queue is not flooded with duplicates.
    Without worker records (``records`` None) the interval alone decides.
    """
    published_before = now - timedelta(seconds=settings.redispatch_after_s)
    backoff_over = or_(Job.retry_at.is_(None), Job.retry_at <= now)
    candidates = session.scalars(
        select(Job)
        .where(
            Job.status == JobStatus.QUEUED.value,
            or_(
                and_(Job.dispatched_at < published_before, backoff_over),
                and_(Job.dispatched_at.is_(None), Job.retry_at <= now),
            ),
        )
        .order_by(Job.id)
        .limit(SWEEP_BATCH)
        .with_for_update(skip_locked=True)
    ).all()
    waiting = [job for job in candidates if job.dispatched_at is not None]
    overtaken: dict[str, datetime] = {}
    idle: dict[str, float] = {}
    if waiting and records is not None:
        oldest = min(job.dispatched_at for job in waiting if job.dispatched_at is not None)
        overtaken = _claimed_publishes(session, {job.queue for job in waiting}, oldest)
        idle = _idle_since(records, lost_after_s(settings), now)
    for job in candidates:
        if job.dispatched_at is not None:
            published = job.dispatched_at
            idle_all_interval = idle.get(job.queue, float("inf")) <= published_before.timestamp()
            if records is not None and not (idle_all_interval or overtaken.get(job.queue, published) > published):
                continue  # still waiting its turn behind other messages
            log.warning(
                "job %s: not claimed %.1fs after its publish; publishing again", job.id, settings.redispatch_after_s
            )
        add_to_outbox(session=session, job=job)
        job.dispatched_at = None  # pending again until the relay publishes it
        job.retry_at = None
        report.redispatched += 1


def _read_records(workers: WorkerRegistry | None) -> dict[str, WorkerStatus] | None:
    """The workers' status records by id; None when there is no registry or it cannot be read."""
    if workers is None:
        return None
    try:
        return {record.worker_id: record for record in workers.list()}
    except Exception as exc:  # Redis is down: only the job rows can tell
        log.warning("sweeper: worker status records unavailable: %s", exc)
        return None


def _expire_results(session: Session, storage: Storage, now: datetime, report: SweepReport, batch: int = 100) -> None:
    expired = session.scalars(
        select(Job)
        .where(Job.status == JobStatus.COMPLETED.value, Job.expires_at < now, Job.video_key.is_not(None))
        .limit(batch)
        .with_for_update(skip_locked=True)
    ).all()
    for job in expired:
        for key in (job.video_key, job.thumbnail_key, job.input_reference_key):
            if key:
                storage.delete(key)
        job.video_key = job.thumbnail_key = job.input_reference_key = None
        report.expired += 1


def repair(
    *,
    session_factory: sessionmaker[Session],
    settings: Settings,
    storage: Storage | None = None,
    workers: WorkerRegistry | None = None,
) -> SweepReport:
    """One pass of repairs: jobs of dead workers taken back, unclaimed jobs published again (as
    outbox rows: the relay sends them) and, given storage, expired results deleted. ``workers``
    lets dead workers be noticed from their status records, within a few heartbeats."""
    report = SweepReport()
    now = utcnow()
    records = _read_records(workers)
    with session_scope(session_factory) as session:
        _requeue_lost_workers(session, settings, now, report, records or {})
    with session_scope(session_factory) as session:
        _redispatch_unclaimed(session, settings, now, report, records)
    if storage is not None:
        with session_scope(session_factory) as session:
            _expire_results(session, storage, now, report)
    return report


def recount_depths(session_factory: sessionmaker[Session]) -> dict[str, int]:
    """The queue depth counters (``jobs.depths``) rewritten from an exact count: {queue: depth}."""
    with session_scope(session_factory) as session:
        return depths.recount(session)


def sweep(
    *,
    session_factory: sessionmaker[Session],
    publisher: Publisher,
    settings: Settings,
    storage: Storage | None = None,
    webhooks: WebhookPublisher | None = None,
    workers: WorkerRegistry | None = None,
    bus: EventBus | None = None,
    route: Callable[[Job], str | None] | None = None,
) -> SweepReport:
    """:func:`repair`, then one relay pass (``jobs.relay``: events fanned out, live messages on
    ``bus``, render messages published and, given a webhook publisher, due webhook deliveries)."""
    report = repair(session_factory=session_factory, settings=settings, storage=storage, workers=workers)
    relay = Relay(
        session_factory=session_factory,
        bus=bus or NullEventBus(),
        publisher=publisher,
        settings=settings,
        webhooks=webhooks,
        route=route,
    )
    relayed = relay.run()
    assert relayed is not None  # run() waits for the fan-out lock
    report.events, report.published, report.webhooks_published = (
        relayed.events,
        relayed.published,
        relayed.webhooks_published,
    )
    return report


RELAY_FAILURE_PAUSE_S = 0.5  # after a failed pass (database restarting): no busy loop of failing passes
# After a pass, the relay thread waits as long as that pass took, at most this, before the next one.
# A pass has a fixed cost whatever its size (its statements and round trips are per batch, not per
# event), and in an API process its thread takes the GIL from the requests: under a full load of
# submits the passes had come back to back, about 30 events each. Idle, a pass is short, so a
# lone submit is still relayed at once. The bound is the delay it may add to a job's dispatch under
# load: with 0.5 s the render messages reached the broker about 1 s after the submit (p50, against
# 0.20-0.28 s with no rest); with 0.1 s, 0.33 s (benchmarks/bench_service.py, dispatch_p50_ms).
RELAY_MAX_REST_S = 0.1


class Sweeper:
    """The process's relay and repairs, on two daemon threads.

    The relay thread (``vidq-relay``) runs a pass whenever a commit in this process appended job
    events (the commit only wakes it: the committing request or render never waits for the fan-out),
    when kicked, and every ``settings.sweep_interval_s`` (which retries what a broker refused and
    publishes webhook retries as they fall due). Wake-ups that arrive during a pass are coalesced
    into one more pass, which drains everything committed meanwhile: under load, a pass carries
    many events for a fixed number of queries, the more so as the thread rests after each pass as
    long as it took (at most ``RELAY_MAX_REST_S``). The sweeper thread (``vidq-sweeper``) runs the
    repairs every interval, unless ``repairs`` is False (``VIDQ_SWEEPER_ENABLED=false``), and then
    wakes the relay for what they queued. Every ``depths.RECOUNT_INTERVAL_S`` (and at its first
    pass) it also rewrites the queue depth counters from an exact count (``recount_depths``).
    """

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        publisher: Publisher,
        settings: Settings,
        storage: Storage | None = None,
        webhooks: WebhookPublisher | None = None,
        workers: WorkerRegistry | None = None,
        bus: EventBus | None = None,
        route: Callable[[Job], str | None] | None = None,
        repairs: bool = True,
    ) -> None:
        self._session_factory = session_factory
        self._settings = settings
        self._storage = storage
        self._workers = workers
        self.relay = Relay(
            session_factory=session_factory,
            bus=bus or NullEventBus(),
            publisher=publisher,
            settings=settings,
            webhooks=webhooks,
            route=route,
        )
        self._repairs = repairs
        self._interval = settings.sweep_interval_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._unregister: Callable[[], None] | None = None
        self._relay_thread = threading.Thread(target=self._relay_loop, name="vidq-relay", daemon=True)
        self._sweep_thread = threading.Thread(target=self._sweep_loop, name="vidq-sweeper", daemon=True)

    def start(self) -> None:
        self._unregister = run_after_commit(self.kick)
        self._relay_thread.start()
        if self._repairs:
            self._sweep_thread.start()

    def stop(self) -> None:
        if self._unregister is not None:
            self._unregister()
        self._stop.set()
        self._wake.set()
        for thread in (self._relay_thread, self._sweep_thread):
            if thread.is_alive():
                thread.join(timeout=10)

    def kick(self) -> None:
        """Run a relay pass on the relay thread now (or right after the one in progress)."""
        self._wake.set()

    def _relay_loop(self) -> None:
        rest_until = 0.0
        while True:
            self._wake.wait(self._interval)
            # Under load, commits wake this thread all the time: rest as long as the last pass took
            # (at most RELAY_MAX_REST_S) so that passes take bigger batches. See RELAY_MAX_REST_S.
            rest = rest_until - time.monotonic()
            if rest > 0 and self._stop.wait(rest):
                return
            self._wake.clear()  # before the pass: a commit during it wakes the next one
            if self._stop.is_set():
                return
            began = time.monotonic()
            try:
                self.relay.run()
            except Exception:  # the database may be restarting; the next pass tries again
                log.exception("relay pass failed")
                self._stop.wait(RELAY_FAILURE_PAUSE_S)
                began = time.monotonic()  # that pause was rest enough
            ended = time.monotonic()
            rest_until = ended + min(ended - began, RELAY_MAX_REST_S)

    def _sweep_loop(self) -> None:
        next_recount = 0.0
        while not self._stop.wait(self._interval):
            if time.monotonic() >= next_recount:
                try:
                    recount_depths(self._session_factory)
                    next_recount = time.monotonic() + depths.RECOUNT_INTERVAL_S
                except Exception:  # the database may be restarting; the next pass tries again
                    log.exception("queue depth recount failed")
            try:
                repair(
                    session_factory=self._session_factory,
                    settings=self._settings,
                    storage=self._storage,
                    workers=self._workers,
                )
            except Exception:  # the database may be restarting; the next pass tries again
                log.exception("sweep failed")
            self.kick()  # publish what the repairs queued


def make_markers(settings: Settings) -> DispatchMarkers:
    if settings.redis_url:
        return RedisDispatchMarkers(redis_client(settings.redis_url), ttl_s=settings.visibility_timeout_s)
    return MemoryDispatchMarkers()


def make_sweeper(
    settings: Settings,
    app: Celery,
    session_factory: sessionmaker[Session],
    storage: Storage | None = None,
    *,
    bus: EventBus | None = None,
    route: Callable[[Job], str | None] | None = None,
    publisher: CeleryPublisher | None = None,
) -> Sweeper:
    """The process's sweeper and relay; repairs only with ``VIDQ_SWEEPER_ENABLED`` (the default).

    Every process's relay (API or worker) may be the one that publishes a job, so each routes by
    adapter affinity (``jobs.affinity``) unless given another ``route``: a relay without it would send
    a LoRA job to the shared queue whenever its pass wins the fan-out race.
    """
    publisher = publisher or CeleryPublisher(app, make_markers(settings))
    workers = make_worker_registry(settings)
    if route is None:
        route = affinity_router(workers.list, heartbeat_timeout_s=settings.heartbeat_timeout_s)
    return Sweeper(
        session_factory=session_factory,
        publisher=publisher,
        settings=settings,
        storage=storage,
        webhooks=publisher,
        workers=workers,
        bus=bus if bus is not None else make_event_bus(settings),
        route=route,
        repairs=settings.sweeper_enabled,
    )
