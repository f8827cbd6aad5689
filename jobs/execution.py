"""Worker-side state changes of a job, each fenced on (job id, worker id, in_progress).

The fence is what makes redelivery safe: once a job was cancelled, deleted, or handed to another
worker after this one was presumed lost, every write from this worker matches no row and raises
JobCancelled, so the stale render stops instead of overwriting the new owner's work.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from jobs import lifecycle
from jobs.attempts import AttemptOutcome
from jobs.db import utcnow
from jobs.errors import JobCancelled
from jobs.models import Job
from jobs.states import JobStatus


def claim_job(*, session: Session, job_id: str, worker_id: str) -> Job | None:
    """Move a queued job to in_progress under a row lock; None if it is not queued (already taken,
    finished, cancelled or deleted), in which case the message is simply dropped."""
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None or job.status != JobStatus.QUEUED.value:
        return None
    lifecycle.start(session=session, job=job, worker_id=worker_id)
    return job


def _owned(job_id: str, worker_id: str):  # type: ignore[no-untyped-def]
    return (Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.IN_PROGRESS.value)


def _lock_owned(session: Session, job_id: str, worker_id: str) -> Job:
    job = session.scalar(select(Job).where(*_owned(job_id, worker_id)).with_for_update())
    if job is None:
        raise JobCancelled(f"job {job_id} is no longer running on {worker_id}")
    return job


def ensure_owned(*, session: Session, job_id: str, worker_id: str) -> None:
    """Raise JobCancelled unless this worker still runs the job (a cheap primary-key read)."""
    found = session.scalar(select(Job.id).where(*_owned(job_id, worker_id)))
    if found is None:
        raise JobCancelled(f"job {job_id} is no longer running on {worker_id}")


def record_progress(
    *,
    session: Session,
    job_id: str,
    worker_id: str,
    stage: str,
    step: int,
    total_steps: int,
    progress: int,
    eta_seconds: float | None = None,
) -> None:
    result = session.execute(
        update(Job)
        .where(*_owned(job_id, worker_id))
        .values(
            stage=stage,
            current_step=step,
            total_steps=total_steps,
            progress=progress,
            eta_seconds=eta_seconds,
            heartbeat_at=utcnow(),
        )
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise JobCancelled(f"job {job_id} is no longer running on {worker_id}")


def record_resume(*, session: Session, job_id: str, worker_id: str, step: int) -> None:
    """Note that this attempt continues from a denoising checkpoint taken after ``step``."""
    result = session.execute(
        update(Job).where(*_owned(job_id, worker_id)).values(resumed_from_step=step, current_step=step)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise JobCancelled(f"job {job_id} is no longer running on {worker_id}")


def record_heartbeat(*, session: Session, job_id: str, worker_id: str) -> bool:
    result = session.execute(update(Job).where(*_owned(job_id, worker_id)).values(heartbeat_at=utcnow()))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def complete_owned(
    *,
    session: Session,
    job_id: str,
    worker_id: str,
    video_key: str,
    thumbnail_key: str,
    stage_timings: dict[str, float],
    result_ttl_s: int,
    memory: dict[str, Any] | None = None,
    acceleration_result: dict[str, Any] | None = None,
) -> Job:
    job = _lock_owned(session, job_id, worker_id)
    lifecycle.complete(
        session=session,
        job=job,
        video_key=video_key,
        thumbnail_key=thumbnail_key,
        stage_timings=stage_timings,
        result_ttl_s=result_ttl_s,
        memory=memory,
        acceleration_result=acceleration_result,
    )
    return job


def fail_owned(
    *, session: Session, job_id: str, worker_id: str, code: str, message: str, trace: str | None = None
) -> Job | None:
    """Record a render failure (``trace``: the traceback, kept on the attempt); None if the job is no
    longer ours (then there is nothing to record)."""
    try:
        job = _lock_owned(session, job_id, worker_id)
    except JobCancelled:
        return None
    lifecycle.fail(session=session, job=job, code=code, message=message, trace=trace)
    return job


def retry_delay_s(attempt: int, *, backoff_s: float, backoff_max_s: float) -> float:
    """The wait before publishing a job again after its ``attempt``-th attempt failed transiently."""
    return min(backoff_s * 2 ** max(attempt - 1, 0), backoff_max_s)


def retry_owned(
    *,
    session: Session,
    job_id: str,
    worker_id: str,
    code: str,
    message: str,
    max_attempts: int,
    backoff_s: float,
    backoff_max_s: float,
    trace: str | None = None,
    now: datetime | None = None,
) -> Job | None:
    """Record an attempt that a transient fault ended (``code`` names it, e.g. ``storage_unavailable``):
    back to the queue, published again after the back-off, or failed when no attempts are left (the
    error then says what kept failing). None if the job is no longer ours."""
    try:
        job = _lock_owned(session, job_id, worker_id)
    except JobCancelled:
        return None
    now = now or utcnow()
    if job.attempts >= max_attempts:
        lifecycle.fail(
            session=session,
            job=job,
            code=code,
            message=f"{message} (gave up after {job.attempts} attempts, each ended by {code})",
            attempt_error=f"{code}: {message}",
            trace=trace,
            now=now,
        )
    else:
        delay = retry_delay_s(job.attempts, backoff_s=backoff_s, backoff_max_s=backoff_max_s)
        lifecycle.requeue(
            session=session,
            job=job,
            reason=f"attempt {job.attempts} ended by {code}: {message}; retrying",
            retry_at=now + timedelta(seconds=delay),
            attempt_outcome=AttemptOutcome.FAILED,
            attempt_error=f"{code}: {message}",
            trace=trace,
            now=now,
        )
    return job
