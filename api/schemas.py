"""Request and response bodies of ``/v1/videos``, shaped like OpenAI's Videos API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.models import Job
from jobs.validation import JobRequest


class VideoCreate(BaseModel):
    """Omitted fields take the model's defaults from the registry; the seed is drawn and recorded."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="What the video shows.")
    model: str | None = Field(default=None, description="A registry name, e.g. `wan2.1-t2v-1.3b`.")
    negative_prompt: str = ""
    size: str | None = Field(
        default=None, description="`WIDTHxHEIGHT`, one of the model's sizes.", examples=["832x480"]
    )
    num_frames: int | None = Field(default=None, description="4k+1 frames, within the model's range.")
    fps: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None

    def to_request(self, default_model: str) -> JobRequest:
        return JobRequest(
            prompt=self.prompt,
            model=self.model or default_model,
            negative_prompt=self.negative_prompt,
            size=self.size,
            num_frames=self.num_frames,
            fps=self.fps,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
        )


class VideoError(BaseModel):
    code: str
    message: str


class VideoPublic(BaseModel):
    id: str
    object: Literal["video"] = "video"
    model: str
    status: str
    progress: int
    stage: str | None
    current_step: int
    total_steps: int
    queue_position: int | None
    created_at: int
    started_at: int | None
    completed_at: int | None
    expires_at: int | None
    prompt: str
    negative_prompt: str
    size: str
    num_frames: int
    fps: int
    seconds: float
    num_inference_steps: int
    guidance_scale: float
    seed: int
    attempts: int
    error: VideoError | None
    stage_timings: dict[str, Any] | None

    @classmethod
    def from_job(cls, job: Job, *, queue_position: int | None) -> VideoPublic:
        return cls(
            id=job.id,
            model=job.model,
            status=job.status,
            progress=job.progress,
            stage=job.stage,
            current_step=job.current_step,
            total_steps=job.total_steps,
            queue_position=queue_position,
            created_at=_ts(job.created_at),
            started_at=_ts(job.started_at),
            completed_at=_ts(job.completed_at),
            expires_at=_ts(job.expires_at),
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            size=job.size,
            num_frames=job.num_frames,
            fps=job.fps,
            seconds=round(job.num_frames / job.fps, 3),
            num_inference_steps=job.num_inference_steps,
            guidance_scale=job.guidance_scale,
            seed=job.seed,
            attempts=job.attempts,
            error=VideoError(code=job.error_code, message=job.error_message or "") if job.error_code else None,
            stage_timings=job.stage_timings,
        )


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VideoPublic]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None
