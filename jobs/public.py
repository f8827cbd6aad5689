"""A job as clients see it: `VideoPublic`, the one representation behind the REST responses, the
event stream and webhook bodies, so the three never drift apart. Timestamps are Unix seconds."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
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


class VideoError(BaseModel):
    code: str
    message: str


class VideoRetry(BaseModel):
    """Set while a job waits for another attempt after its worker died or a transient fault."""

    attempt: int  # the attempt it waits for
    reason: str  # what ended the previous attempt
    not_before: int | None  # Unix seconds; the back-off of a transient fault

    @classmethod
    def of(cls, job: Job) -> VideoRetry | None:
        """None when the job is not waiting for another attempt."""
        if job.status != JobStatus.QUEUED.value or not job.attempts:
            return None
        return cls(attempt=job.attempts + 1, reason=job.error_message or "", not_before=unix(job.retry_at))


class VideoPublic(BaseModel):
    """The job as clients see it: the REST body, each SSE status event's data, and every webhook's
    `data` (`jobs.events.StatusEvent`, `jobs.webhooks.outbox.event_body`)."""

    id: str
    object: Literal["video"] = "video"
    model: str
    status: str
    progress: int
    stage: str | None
    current_step: int
    total_steps: int
    queue_position: int | None
    eta_seconds: float | None = Field(description="Seconds of denoising left, from the measured step times.")
    created_at: int
    started_at: int | None
    completed_at: int | None
    expires_at: int | None
    prompt: str
    negative_prompt: str
    size: str
    num_frames: int
    fps: int
    seconds: str = Field(description='`num_frames` / `fps`, as a string like OpenAI\'s (`"4.062"`).')
    num_inference_steps: int
    guidance_scale: float
    seed: int
    num_gpus: int = 1
    attempts: int
    # The denoising step this attempt resumed after, from a checkpoint of an earlier attempt; None: from the start.
    resumed_from_step: int | None = None
    loras: list[dict[str, Any]] = Field(
        default_factory=list,
        description='The adapters applied: `[{"id", "name", "scale"}]`; on a two-expert model an entry that gave '
        "the low-noise expert its own adapter or strength also has `id_2`, `name_2`, `scale_2`.",
    )
    flow_shift: float | None = Field(default=None, description="The flow shift used (None: the model's).")
    retry: VideoRetry | None = None
    error: VideoError | None
    stage_timings: dict[str, Any] | None
    memory: dict[str, Any] | None = None
    acceleration: dict[str, Any] | None = Field(
        default=None, description="The fast-mode options this job asked for, resolved (None: lossless)."
    )
    acceleration_result: dict[str, Any] | None = Field(
        default=None,
        description="What the render did: `steps_computed`, `steps_skipped`, `skipped_steps`, `precision`.",
    )
    webhook_url: str | None
    webhook_events: list[str] | None

    @classmethod
    def from_job(cls, job: Job, *, queue_position: int | None) -> VideoPublic:
        """`queue_position` from `jobs.public.queue_position` (one query), or None once not queued."""
        return cls(
            id=job.id,
            model=job.model,
            status=job.status,
            progress=job.progress,
            stage=job.stage,
            current_step=job.current_step,
            total_steps=job.total_steps,
            queue_position=queue_position,
            eta_seconds=job.eta_seconds,
            created_at=unix(job.created_at),
            started_at=unix(job.started_at),
            completed_at=unix(job.completed_at),
            expires_at=unix(job.expires_at),
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            size=job.size,
            num_frames=job.num_frames,
            fps=job.fps,
            seconds=format_seconds(job.num_frames, job.fps),  # a string, as OpenAI writes it
            num_inference_steps=job.num_inference_steps,
            guidance_scale=job.guidance_scale,
            seed=job.seed,
            num_gpus=job.num_gpus,
            attempts=job.attempts,
            resumed_from_step=job.resumed_from_step,
            loras=job.loras or [],
            flow_shift=job.flow_shift,
            retry=VideoRetry.of(job),
            error=VideoError(code=job.error_code, message=job.error_message or "") if job.error_code else None,
            stage_timings=job.stage_timings,
            memory=job.memory,
            acceleration=job.acceleration,
            acceleration_result=job.acceleration_result,
            webhook_url=job.webhook_url,
            webhook_events=job.webhook_events,
        )

    @classmethod
    def read(cls, *, session: Session, job: Job) -> VideoPublic:
        """`from_job` with the job's queue position looked up."""
        return cls.from_job(job, queue_position=queue_position(session=session, job=job))
