"""The one relay: every committed job event fanned out exactly once, then the outboxes published.

A state change (``jobs.lifecycle``) appends a ``JobEvent`` in the transaction that makes it. One
relay pass then

1. fans out the unrelayed events, oldest first (:func:`fan_out`): for each, in ONE transaction with
   stamping ``relayed_at``, a ``DispatchOutbox`` row when it is ``video.queued`` and the job still
   waits for a worker (not during a back-off: the sweeper publishes it when that ends), and one
   ``WebhookDelivery`` per target (``jobs.webhooks.outbox.add_deliveries``). After that commit,
   one live ``StatusEvent`` per event goes on the bus;
2. publishes pending outbox rows to the broker (:func:`relay_outbox`);
3. publishes due webhook deliveries to the ``webhooks`` queue (``relay_webhooks``).

A relay killed before its fan-out commits leaves the events unrelayed: the next pass writes their
rows, once. A relay killed between that commit and the live publish loses only the live message,
which streams recover from the table (``jobs.live`` replays by sequence number). Passes are
serialised (a PostgreSQL advisory lock; a process lock for SQLite, whose embedded mode is one
process), so events go out in order.

A pass costs a bounded number of statements whatever its size: the events, their jobs and their
owners' endpoints are read with one query each, so a burst of commits is drained by few passes.

Passes run on each process's relay thread (``jobs.dispatch.Sweeper``), never in the thread that
committed: a commit that appended events only wakes it (:func:`run_after_commit`), so a request
answers without waiting for the fan-out, and commits that arrive while a pass runs are taken by the
next one (the wake-ups are coalesced). The thread also runs a pass every sweep interval, so an event
committed where no relay runs is still delivered.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, event, insert, select, text, update
from sqlalchemy.orm import InstrumentedAttribute, Session, load_only, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from jobs.db import IDLE_BOUND_SQL, bound_idle_transaction, relay_idle_bound, session_scope, utcnow
from jobs.events import EventBus, JobEventType, StatusEvent, publish_all
from jobs.lifecycle import EVENTS_PENDING
from jobs.models import DispatchOutbox, Job, JobEvent
from jobs.settings import Settings
from jobs.states import JobStatus
from jobs.webhooks.outbox import WebhookPublisher, add_deliveries, endpoints_of, relay_webhooks

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key of the fan-out ("vidq" in ASCII): one pass at a time across processes.
FAN_OUT_LOCK_KEY = 0x76696471
# The lock, and the bound on the transaction that holds it (jobs.db.RELAY_IDLE_TIMEOUT_S), in one statement.
_LOCK_BOUNDED = text(f"SELECT {IDLE_BOUND_SQL}, pg_advisory_xact_lock(:key)")
_TRY_LOCK_BOUNDED = text(f"SELECT {IDLE_BOUND_SQL}, pg_try_advisory_xact_lock(:key)")
_PROCESS_LOCK = threading.Lock()  # the same for SQLite (embedded mode: one process)


class Publisher(Protocol):
    def publish(self, job_id: str, queue: str) -> None: ...


def _outbox_values(job: Job, now: datetime) -> dict[str, object]:
    """The columns of ``job``'s render-message row (one definition for both writers below)."""
    return {"job_id": job.id, "queue": job.queue, "created_at": now}


def add_to_outbox(*, session: Session, job: Job) -> DispatchOutbox:
    """Record that ``job`` needs a render message; call inside a transaction that holds the job."""
    row = DispatchOutbox(**_outbox_values(job, utcnow()))
    session.add(row)
    return row


_OUTBOX = DispatchOutbox.__table__
_EVENTS = JobEvent.__table__
_JOBS = Job.__table__
# Core statements (no ORM bookkeeping per row); ``ids`` is a list bound to an expanding IN.
_ADD_TO_OUTBOX = insert(_OUTBOX)
_STAMP_RELAYED = (
    update(_EVENTS).where(_EVENTS.c.id.in_(bindparam("ids", expanding=True))).values(relayed_at=bindparam("now"))
)
_MARK_PUBLISHED = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True)))
    .values(published_at=bindparam("now"), publish_attempts=_OUTBOX.c.publish_attempts + 1)
)
_MARK_DISPATCHED = (
    update(_JOBS).where(_JOBS.c.id.in_(bindparam("ids", expanding=True))).values(dispatched_at=bindparam("now"))
)


def relay_outbox(
    *,
    session_factory: sessionmaker[Session],
    publisher: Publisher,
    batch: int = 100,
    route: Callable[[Job], str | None] | None = None,
) -> int:
    """Publish up to ``batch`` pending outbox rows; return how many went out. Stops at the first
    broker error.

    ``route`` may send a job to another queue than its row's (``jobs.affinity``: a worker's own
    queue); if that worker dies before claiming the job, the sweeper publishes it again after
    ``VIDQ_REDISPATCH_AFTER_S``, routed afresh.
    """
    with session_scope(session_factory) as session:
        bound_idle_transaction(session)  # a frozen relay does not keep these rows from the others
        rows = session.scalars(
            select(DispatchOutbox)
            .where(DispatchOutbox.published_at.is_(None))
            .order_by(DispatchOutbox.id)
            .limit(batch)
            .with_for_update(skip_locked=True)  # concurrent relays share the work, never double it
        ).all()
        if not rows:
            return 0
        jobs = _jobs_by_id(session, {row.job_id for row in rows}, columns=_ROUTE_COLUMNS, lock=True)
        sendable = [row for row in rows if row.job_id in jobs]  # others: locked (deleted or changed), next pass
        messages = [(row.job_id, _destination(row, jobs[row.job_id], route)) for row in sendable]
        sent = _publish(publisher, sendable, messages)
        if sent:  # two statements for the batch (see fan_out)
            now = utcnow()
            session.execute(_MARK_PUBLISHED, {"now": now, "ids": [row.id for row in sent]})
            session.execute(_MARK_DISPATCHED, {"now": now, "ids": [row.job_id for row in sent]})
            for row in sent:
                set_committed_value(row, "published_at", now)
                set_committed_value(row, "publish_attempts", row.publish_attempts + 1)
                set_committed_value(jobs[row.job_id], "dispatched_at", now)
        published = len(sent)
    return published


def _destination(row: DispatchOutbox, job: Job, route: Callable[[Job], str | None] | None) -> str:
    """The queue ``route`` picks for the job (a warm worker's own), else the row's."""
    direct = route(job) if route is not None else None
    return direct if direct is not None else row.queue


def _publish(publisher: Publisher, rows: list[DispatchOutbox], messages: list[tuple[str, str]]) -> list[DispatchOutbox]:
    """Publish ``messages`` (one per row); return the rows whose message went out. A broker error
    stops there: the failed row (the whole batch, when the publisher batches) counts an attempt and
    keeps its error, and the rest waits for the next pass."""
    many = getattr(publisher, "publish_many", None)
    if many is not None and messages:
        try:
            many(messages)
        except Exception as exc:  # the broker is down: keep the rows, try on the next pass
            for row in rows:
                _failed(row, exc)
            return []
        return rows
    sent: list[DispatchOutbox] = []
    for row, (job_id, queue) in zip(rows, messages, strict=True):
        try:
            publisher.publish(job_id, queue)
        except Exception as exc:
            _failed(row, exc)
            break
        sent.append(row)
    return sent


def _failed(row: DispatchOutbox, exc: Exception) -> None:
    row.publish_attempts += 1
    row.last_error = f"{type(exc).__name__}: {exc}"[:1000]
    log.warning("outbox relay could not publish %s: %s", row.job_id, exc)


# The job columns each pass reads. A job row is wide (prompt, parameters, result, timings), and
# loading all of it for every job of a pass showed in the API's profile under load (py-spy: 4% of
# an API process's time). Any other column would still be loaded on access, one query per job:
# keep these lists in step with the code below (tests/jobs/test_relay.py counts the statements).
_FAN_OUT_COLUMNS = (
    Job.owner_id,
    Job.status,
    Job.dispatched_at,
    Job.retry_at,
    Job.queue,
    Job.webhook_url,
    Job.webhook_events,
)
_ROUTE_COLUMNS = (Job.queue, Job.loras)  # jobs.affinity


def _jobs_by_id(
    session: Session,
    ids: set[str],
    *,
    columns: tuple[InstrumentedAttribute[Any], ...],
    lock: bool = False,
    key_share: bool = False,
) -> dict[str, Job]:
    """The jobs ``ids`` in one query (those deleted meanwhile are absent).

    With ``lock``, rows another transaction holds are skipped rather than waited for: a job delete
    locks the job and then, by its cascade, the job's outbox rows, while the outbox relay holds an
    outbox row and would then update its job (``dispatched_at``). Waiting there deadlocks the two
    (PostgreSQL aborts one: the client's delete got a 503); skipping leaves the row to a later pass,
    or to the cascade."""
    query = select(Job).options(load_only(*columns)).where(Job.id.in_(ids))
    if lock:
        query = query.with_for_update(skip_locked=True)
    elif key_share:  # waits; in id order, as every multi-job locker takes them
        query = query.order_by(Job.id).with_for_update(key_share=True)
    return {job.id: job for job in session.scalars(query)}


@contextlib.contextmanager
def _fan_out_lock(session: Session, *, wait: bool) -> Iterator[bool]:
    """Yields whether this pass holds the lock (always, when ``wait``)."""
    if session.get_bind().dialect.name == "postgresql":  # released with the transaction
        params = {"key": FAN_OUT_LOCK_KEY, "idle": relay_idle_bound()}
        if wait:
            session.execute(_LOCK_BOUNDED, params)
            yield True
        else:
            yield bool(session.execute(_TRY_LOCK_BOUNDED, params).one()[1])
        return
    held = _PROCESS_LOCK.acquire(blocking=wait)
    try:
        yield held
    finally:
        if held:
            _PROCESS_LOCK.release()


def _needs_render_message(job: Job, now: datetime) -> bool:
    return (
        job.status == JobStatus.QUEUED.value
        and job.dispatched_at is None
        and (job.retry_at is None or job.retry_at <= now)
    )


def fan_out(
    *, session_factory: sessionmaker[Session], bus: EventBus, batch: int = 100, wait: bool = True
) -> int | None:
    """Fan out up to ``batch`` unrelayed events (see the module docstring); return how many, or None
    when another pass holds the lock and ``wait`` is False."""
    relayed: list[StatusEvent] = []
    with session_scope(session_factory) as session, _fan_out_lock(session, wait=wait) as held:
        if not held:
            return None
        rows = session.scalars(
            select(JobEvent).where(JobEvent.relayed_at.is_(None)).order_by(JobEvent.id).limit(batch)
        ).all()
        if not rows:
            return 0
        # The jobs are key-share locked (in id order) before any of their events is touched: rows
        # written below reference them, and taking that lock only at the flush, while holding the
        # events, deadlocked with a job delete (job locked, then its events by the cascade). Here
        # a pass waits for such a delete instead, and a job it removed is simply absent.
        jobs = _jobs_by_id(session, {row.job_id for row in rows}, columns=_FAN_OUT_COLUMNS, key_share=True)
        endpoints = endpoints_of(session, {job.owner_id for job in jobs.values()})
        now = utcnow()
        outbox: list[dict[str, object]] = []
        stamped: list[int] = []
        for row in rows:
            job = jobs.get(row.job_id)
            if job is None:  # deleted meanwhile, its events with it
                continue
            kind = JobEventType(row.type)
            if kind is JobEventType.QUEUED and _needs_render_message(job, now):
                outbox.append(_outbox_values(job, now))
            add_deliveries(
                session=session,
                job=job,
                event=kind,
                data=row.data,
                event_id=row.id,
                now=now,
                endpoints=endpoints.get(job.owner_id, []),
            )
            set_committed_value(row, "relayed_at", now)  # written below, with the others
            stamped.append(row.id)
            relayed.append(StatusEvent.from_row(row))
        # A batch's rows in two statements, not one per row through the unit of work: under load
        # a pass carries a hundred events, and the relay shares the API process's CPU with requests.
        if outbox:
            session.execute(_ADD_TO_OUTBOX, outbox)
        if stamped:
            session.execute(_STAMP_RELAYED, {"now": now, "ids": stamped})
    # After the commit: a stream never sees a change before it is stored. One round trip for the batch.
    publish_all(bus, [(status.job.id, status) for status in relayed])
    return len(relayed)


@dataclass
class RelayReport:
    events: int = 0
    published: int = 0
    webhooks_published: int = 0


@dataclass
class Relay:
    """What one process needs to run relay passes."""

    session_factory: sessionmaker[Session]
    bus: EventBus
    publisher: Publisher
    settings: Settings
    webhooks: WebhookPublisher | None = None
    route: Callable[[Job], str | None] | None = None
    # One pass at a time per relay: a caller's pass (tests, ``sweep``) that returns after the relay
    # thread's has finished has seen everything committed before it, published included.
    _passes: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def run(self, *, wait: bool = True, batch: int = 100) -> RelayReport | None:
        """One pass (the fan-out, then the outbox, each repeated while full batches come back, so a
        backlog drains in one pass); None when another pass holds the fan-out lock and ``wait`` is
        False."""
        if not self._passes.acquire(blocking=wait):
            return None
        try:
            return self._run(wait=wait, batch=batch)
        finally:
            self._passes.release()

    def _run(self, *, wait: bool, batch: int) -> RelayReport | None:
        report = RelayReport()
        while True:
            events = fan_out(session_factory=self.session_factory, bus=self.bus, wait=wait, batch=batch)
            if events is None:
                return None
            report.events += events
            if events < batch:
                break
        while True:
            published = relay_outbox(
                session_factory=self.session_factory, publisher=self.publisher, route=self.route, batch=batch
            )
            report.published += published
            if published < batch:
                break
        if self.webhooks is not None:
            report.webhooks_published = relay_webhooks(
                session_factory=self.session_factory, publisher=self.webhooks, settings=self.settings
            )
        return report


# Called after a commit that appended events, in the committing thread (`run_after_commit`): they
# must be quick (a relay only wakes its thread).
_after_commit: list[Callable[[], None]] = []
_after_commit_lock = threading.Lock()


def run_after_commit(callback: Callable[[], None]) -> Callable[[], None]:
    """Register ``callback`` for every commit in this process that appended job events; returns the
    function that unregisters it. It runs in the committing thread, so it must only hand the work
    on (wake a thread); exceptions are logged (the relay's next interval pass retries)."""
    with _after_commit_lock:
        _after_commit.append(callback)

    def remove() -> None:
        with _after_commit_lock:
            if callback in _after_commit:
                _after_commit.remove(callback)

    return remove


@event.listens_for(Session, "after_commit")
def _relay_committed_events(session: Session) -> None:
    if not session.info.pop(EVENTS_PENDING, False):
        return
    with _after_commit_lock:
        callbacks = list(_after_commit)
    for callback in callbacks:
        try:
            callback()
        except Exception as exc:
            log.warning("relay after commit failed, the sweeper retries: %s", exc)
