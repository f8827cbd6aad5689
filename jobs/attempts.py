"""The attempt log of a job: one row per run on a worker, so an operator can see which worker ran
each try and how it ended. Written in the same transaction as the status change it records."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.db import utcnow
from jobs.models import Job, JobAttempt


class AttemptOutcome:
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "worker_lost"  # the sweeper took the job back from a worker that stopped heart-beating


def open_attempt(*, session: Session, job: Job, now: datetime | None = None) -> JobAttempt:
    """Record the run a worker just claimed (``jobs.lifecycle.start`` does)."""
    row = JobAttempt(job_id=job.id, attempt=job.attempts, worker_id=job.worker_id or "", started_at=now or utcnow())
    session.add(row)
    return row


def close_attempt(
    *,
    session: Session,
    job: Job,
    outcome: str,
    error: str | None = None,
    trace: str | None = None,
    now: datetime | None = None,
) -> JobAttempt | None:
    """End the job's open attempt, if it has one (a queued job cancelled before any run has none)."""
    row = session.scalar(
        select(JobAttempt)
        .where(JobAttempt.job_id == job.id, JobAttempt.ended_at.is_(None))
        .order_by(JobAttempt.attempt.desc())
        .limit(1)
    )
    if row is None:
        return None
    row.ended_at = now or utcnow()
    row.outcome = outcome
    row.error = error[:4000] if error else None
    row.trace = trace[:20000] if trace else None
    return row


def list_attempts(*, session: Session, job_id: str) -> list[JobAttempt]:
    return list(session.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.attempt)))
