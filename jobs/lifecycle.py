"""Every change of a job's status, and what must accompany it, in the caller's transaction.

`create`, `start`, `complete`, `fail`, `cancel` and `requeue` are the only code that writes
``Job.status`` (an architecture test checks it). Each one checks the move against the state
machine (``jobs.states``), sets the row's fields and timestamps, opens or closes the attempt row
(``jobs.attempts``), counts itself in the metrics (applied when the change commits) and appends one
``JobEvent`` — the job's next sequence number, the event type and the public job right after the
change. The caller holds the job's row lock (``SELECT ... FOR UPDATE``) and commits.

What follows a change — the render message of a queued job, a webhook delivery per target, a live
message — is not the caller's business: the relay (``jobs.relay``) fans each committed event out,
so a crash between the commit and the fan-out loses nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.orm import Session

from jobs import depths, metrics
from jobs.attempts import AttemptOutcome, close_attempt, open_attempt
from jobs.db import utcnow
from jobs.events import EVENT_FOR_STATUS
from jobs.inserts import insert_row
from jobs.models import Job, JobEvent
from jobs.public import VideoPublic
from jobs.states import JobStatus, check_transition

# Set on a session whose transaction appended events; `jobs.relay` is kicked after its commit.
EVENTS_PENDING = "vidq.job_events_pending"

_changing: ContextVar[bool] = ContextVar("vidq_lifecycle_changing", default=False)


class StatusChangedOutsideLifecycle(RuntimeError):
    """A stored job's ``status`` was assigned by code other than this module's functions."""


@event.listens_for(Job.status, "set")
def _only_lifecycle_changes_status(target: Job, value: object, oldvalue: object, initiator: object) -> None:
    # A job being built may be given a status; a stored one changes only here, with its event.
    if not _changing.get() and inspect(target).persistent:
        raise StatusChangedOutsideLifecycle(
            f"job {target.id}: status set to {value!r} outside jobs.lifecycle (its event would be missing)"
        )


@contextmanager
def _changing_status() -> Iterator[None]:
    token = _changing.set(True)
    try:
        yield
    finally:
        _changing.reset(token)


def _set_status(session: Session, job: Job, target: JobStatus) -> None:
    """Move ``job`` to ``target`` if the state machine allows it (raises ``IllegalTransition``), and
    count it in or out of its queue's depth (``jobs.depths``)."""
    before = job.status
    with _changing_status():
        job.status = check_transition(before, target).value
    queued = JobStatus.QUEUED.value
    if (before == queued) != (job.status == queued):
        depths.record(session, job.queue, 1 if job.status == queued else -1)


def _append_event(session: Session, job: Job, now: datetime) -> JobEvent:
    """The job's next event, built from the row as it is now (flushed, so defaults are filled; the
    sequence number is set first, so it goes out in the same UPDATE as the change)."""
    job.last_event_seq = (job.last_event_seq or 0) + 1
    session.flush()
    return _add_event(session, job, now, VideoPublic.read(session=session, job=job))


def _add_event(session: Session, job: Job, now: datetime, public: VideoPublic, *, last: bool = False) -> JobEvent:
    """``last``: no other write follows before the commit, so the INSERT also carries the queue
    counter's change (``depths.carry``), where it can."""
    row = JobEvent(
        job_id=job.id,
        seq=job.last_event_seq,
        type=EVENT_FOR_STATUS[JobStatus(job.status)].value,
        data=public.model_dump(mode="json"),
        created_at=now,
    )
    carried = depths.carry(session) if last else None
    if carried is None:
        insert_row(session, row)  # one INSERT now, no unit-of-work flush at commit
    else:
        insert_row(session, row, carrying=carried[0], params=carried[1])
    session.info[EVENTS_PENDING] = True
    return row


def create(*, session: Session, job: Job, now: datetime | None = None) -> JobEvent:
    """Record a new job: ``job`` is built and not yet in ``session``; it is inserted (queued, with
    its first event) and is a persistent row of ``session`` afterwards. A duplicate key (an
    ``Idempotency-Key`` raced by another request) raises ``IntegrityError`` here.

    Both rows go in with one Core INSERT each (``jobs.inserts``): every submit pays for this, and the
    unit of work's flush was half the API's CPU per submit. Its queue position is its queue's depth
    counter (``jobs.depths``) with itself counted: the jobs queued when it was accepted, itself
    included (read by the job's own INSERT, whatever the backlog; submits committing at the same
    moment do not see each other, later reads count exactly)."""
    with _changing_status():
        job.status = JobStatus.QUEUED.value
    job.last_event_seq = 1
    # The INSERT returns the queue's committed depth (a subquery in its RETURNING: no round trip).
    committed = insert_row(session, job, also_return=depths.COMMITTED_DEPTH, params={"depth_of_queue": job.queue})
    depths.record(session, job.queue, 1)
    metrics.after_commit(session, lambda model=job.model: metrics.JOBS_SUBMITTED.labels(model).inc())
    public = VideoPublic.from_job(job, queue_position=max(depths.with_pending(session, job.queue, committed), 1))
    # The last write of a submit's transaction: its event carries the depth counter's +1.
    return _add_event(session, job, now or job.created_at, public, last=True)


def delete(*, session: Session, job: Job) -> None:
    """Delete the job's row (its events and attempts go with it); a queued one leaves its queue's depth."""
    if job.status == JobStatus.QUEUED.value:
        depths.record(session, job.queue, -1)
    session.delete(job)


def start(*, session: Session, job: Job, worker_id: str, now: datetime | None = None) -> JobEvent:
    """A worker claimed the queued job: a new attempt begins."""
    _set_status(session, job, JobStatus.IN_PROGRESS)
    now = now or utcnow()
    job.attempts += 1
    job.worker_id = worker_id
    job.started_at = now
    job.heartbeat_at = now
    job.stage = None
    job.progress = 0
    job.current_step = 0
    job.resumed_from_step = None
    job.retry_at = None
    job.total_steps = job.num_inference_steps
    job.eta_seconds = None
    job.error_code = job.error_message = None
    waited = (now - job.created_at).total_seconds()
    metrics.after_commit(job, lambda model=job.model: metrics.QUEUE_WAIT.labels(model).observe(waited))
    open_attempt(session=session, job=job, now=now)
    return _append_event(session, job, now)


def complete(
    *,
    session: Session,
    job: Job,
    video_key: str,
    thumbnail_key: str,
    stage_timings: dict[str, float],
    result_ttl_s: int,
    memory: dict[str, Any] | None = None,
    acceleration_result: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> JobEvent:
    _set_status(session, job, JobStatus.COMPLETED)
    job.memory = memory
    job.acceleration_result = acceleration_result
    now = now or utcnow()
    job.completed_at = now
    job.expires_at = now + timedelta(seconds=result_ttl_s)
    job.video_key = video_key
    job.thumbnail_key = thumbnail_key
    job.stage_timings = stage_timings
    job.progress = 100
    job.stage = None
    job.eta_seconds = None
    latency = (now - job.created_at).total_seconds()

    def count(model: str = job.model) -> None:
        metrics.JOBS_FINISHED.labels(model, "completed").inc()
        metrics.JOB_LATENCY.labels(model).observe(latency)
        for stage, seconds in stage_timings.items():
            metrics.STAGE_SECONDS.labels(model, stage).observe(seconds)

    metrics.after_commit(job, count)
    close_attempt(session=session, job=job, outcome=AttemptOutcome.COMPLETED, now=now)
    return _append_event(session, job, now)


def fail(
    *,
    session: Session,
    job: Job,
    code: str,
    message: str,
    attempt_outcome: str = AttemptOutcome.FAILED,
    attempt_error: str | None = None,
    trace: str | None = None,
    now: datetime | None = None,
) -> JobEvent:
    """The job failed for good (``code`` is its ``error.code``). Its open attempt, if any, ends with
    ``attempt_outcome`` and ``attempt_error`` (default: ``message``) and the traceback ``trace``."""
    _set_status(session, job, JobStatus.FAILED)
    now = now or utcnow()
    job.completed_at = now
    job.error_code = code
    job.error_message = message[:4000]
    job.eta_seconds = None
    metrics.after_commit(job, lambda model=job.model: metrics.JOBS_FINISHED.labels(model, "failed").inc())
    close_attempt(
        session=session, job=job, outcome=attempt_outcome, error=attempt_error or message, trace=trace, now=now
    )
    return _append_event(session, job, now)


def cancel(*, session: Session, job: Job, now: datetime | None = None) -> JobEvent:
    """Cancelled by its client or an operator; a running job's worker stops within one step."""
    _set_status(session, job, JobStatus.CANCELLED)
    now = now or utcnow()
    job.completed_at = now
    job.eta_seconds = None
    metrics.after_commit(job, lambda model=job.model: metrics.JOBS_FINISHED.labels(model, "cancelled").inc())
    close_attempt(session=session, job=job, outcome=AttemptOutcome.CANCELLED, now=now)
    return _append_event(session, job, now)


def requeue(
    *,
    session: Session,
    job: Job,
    reason: str | None = None,
    retry_at: datetime | None = None,
    attempt_outcome: str | None = None,
    attempt_error: str | None = None,
    trace: str | None = None,
    now: datetime | None = None,
) -> JobEvent:
    """Back to the queue after a lost worker, a transient failure (then not published again before
    ``retry_at``) or an operator's retry of a failed job; attempts are kept. ``reason`` becomes the
    error message a client sees while it waits (None clears the error). With ``attempt_outcome``,
    the open attempt ends with it (``attempt_error``, default ``reason``)."""
    _set_status(session, job, JobStatus.QUEUED)
    now = now or utcnow()
    if attempt_outcome is not None:
        close_attempt(
            session=session, job=job, outcome=attempt_outcome, error=attempt_error or reason, trace=trace, now=now
        )
    job.retry_at = retry_at
    job.worker_id = None
    job.stage = None
    job.heartbeat_at = None
    job.dispatched_at = None
    job.progress = 0
    job.current_step = 0
    job.eta_seconds = None
    job.completed_at = None
    job.error_code = None
    job.error_message = reason
    metrics.after_commit(job, lambda model=job.model: metrics.JOBS_REQUEUED.labels(model).inc())
    return _append_event(session, job, now)


def events_pending(session: Session) -> bool:
    """Whether ``session``'s transaction appended events (read by the relay's commit hook)."""
    return bool(session.info.get(EVENTS_PENDING))


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back_events(session: Session) -> None:
    session.info.pop(EVENTS_PENDING, None)
