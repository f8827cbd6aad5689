"""Status changes applied to a Job row. Every one goes through ``check_transition``, so the table in
``jobs.states`` is the only authority on what may happen, and each change sets its own timestamps
and counts itself in the metrics (``jobs.metrics``, applied when the change commits)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from jobs import metrics
from jobs.db import utcnow
from jobs.models import Job
from jobs.states import JobStatus, check_transition


def start(job: Job, *, worker_id: str, now: datetime | None = None) -> None:
    job.status = check_transition(job.status, JobStatus.IN_PROGRESS).value
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


def complete(
    job: Job,
    *,
    video_key: str,
    thumbnail_key: str,
    stage_timings: dict[str, float],
    result_ttl_s: int,
    memory: dict[str, Any] | None = None,
    acceleration_result: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    job.status = check_transition(job.status, JobStatus.COMPLETED).value
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


def fail(job: Job, *, code: str, message: str, now: datetime | None = None) -> None:
    job.status = check_transition(job.status, JobStatus.FAILED).value
    job.completed_at = now or utcnow()
    job.error_code = code
    job.error_message = message[:4000]
    job.eta_seconds = None
    metrics.after_commit(job, lambda model=job.model: metrics.JOBS_FINISHED.labels(model, "failed").inc())


def cancel(job: Job, *, now: datetime | None = None) -> None:
    job.status = check_transition(job.status, JobStatus.CANCELLED).value
    job.completed_at = now or utcnow()
    job.eta_seconds = None
    metrics.after_commit(job, lambda model=job.model: metrics.JOBS_FINISHED.labels(model, "cancelled").inc())


def requeue(job: Job, *, reason: str | None = None, retry_at: datetime | None = None) -> None:
    """Back to the queue after a lost worker, a transient failure (then not published again before
    ``retry_at``) or an operator's retry; attempts are kept."""
    job.status = check_transition(job.status, JobStatus.QUEUED).value
    job.retry_at = retry_at
    job.worker_id = None
    job.stage = None
    job.heartbeat_at = None
    job.dispatched_at = None
    job.progress = 0
    job.current_step = 0
    job.eta_seconds = None
    job.completed_at = None
    if reason:
        job.error_message = reason
    metrics.after_commit(job, lambda model=job.model: metrics.JOBS_REQUEUED.labels(model).inc())
