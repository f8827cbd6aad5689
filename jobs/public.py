"""A job as clients see it: the one representation behind the REST responses, the event stream and
webhook bodies, so the three never drift apart. Timestamps are Unix seconds."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from jobs.models import Job
from jobs.states import JobStatus, is_terminal
from spec.registry import format_seconds


def unix(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def queue_position(*, session: Session, job: Job) -> int | None:
    """1 for the next job a worker of its queue will take; None once it is no longer queued."""
    if job.status != JobStatus.QUEUED.value:
        return None
    ahead = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.status == JobStatus.QUEUED.value, Job.queue == job.queue, Job.id < job.id)
    )
    return int(ahead or 0) + 1


def queue_positions(*, session: Session, jobs: list[Job]) -> dict[str, int]:
    """``queue_position`` of every queued job of a page, in ONE query (a list page costs the same
    number of queries whatever its size or the backlog): {job id: position}; others are absent."""
    queued = [j.id for j in jobs if j.status == JobStatus.QUEUED.value]
    if not queued:
        return {}
    ahead = aliased(Job)
    count_ahead = (
        select(func.count())
        .select_from(ahead)
        .where(ahead.status == JobStatus.QUEUED.value, ahead.queue == Job.queue, ahead.id < Job.id)
        .scalar_subquery()
    )
    rows = session.execute(select(Job.id, count_ahead).where(Job.id.in_(queued)))
    return {job_id: int(n or 0) + 1 for job_id, n in rows}


POLL_MIN_MS, POLL_MAX_MS, POLL_DEFAULT_MS = 250, 5000, 1000


def poll_after_ms(job: Job) -> int | None:
    """When a client polling a job should look again: a quarter of its ETA, within 0.25–5 s (1 s while
    there is no ETA yet); None once the job is finished."""
    if is_terminal(job.status):
        return None
    if job.eta_seconds is None:
        return POLL_DEFAULT_MS
    return max(POLL_MIN_MS, min(POLL_MAX_MS, round(job.eta_seconds * 1000 / 4)))


def retry_info(job: Job) -> dict[str, Any] | None:
    """What a client sees of a job waiting for another attempt (None when it is not retrying)."""
    if job.status != JobStatus.QUEUED.value or not job.attempts:
        return None
    return {"attempt": job.attempts + 1, "reason": job.error_message or "", "not_before": unix(job.retry_at)}


def job_to_public(job: Job, *, queue_position: int | None) -> dict[str, Any]:
    return {
        "id": job.id,
        "object": "video",
        "model": job.model,
        "status": job.status,
        "progress": job.progress,
        "stage": job.stage,
        "current_step": job.current_step,
        "total_steps": job.total_steps,
        "queue_position": queue_position,
        "eta_seconds": job.eta_seconds,
        "created_at": unix(job.created_at),
        "started_at": unix(job.started_at),
        "completed_at": unix(job.completed_at),
        "expires_at": unix(job.expires_at),
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "size": job.size,
        "num_frames": job.num_frames,
        "fps": job.fps,
        "seconds": format_seconds(job.num_frames, job.fps),  # a string, as OpenAI writes it
        "num_inference_steps": job.num_inference_steps,
        "guidance_scale": job.guidance_scale,
        "seed": job.seed,
        "num_gpus": job.num_gpus,
        "attempts": job.attempts,
        "resumed_from_step": job.resumed_from_step,
        "loras": job.loras or [],
        "flow_shift": job.flow_shift,
        "retry": retry_info(job),
        "acceleration": job.acceleration,
        "acceleration_result": job.acceleration_result,
        "error": {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None,
        "stage_timings": job.stage_timings,
        "memory": job.memory,
        "webhook_url": job.webhook_url,
        "webhook_events": job.webhook_events,
    }
