"""Request and response bodies of ``/v1/videos``, shaped like OpenAI's Videos API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.models import Job, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from jobs.public import job_to_public, unix
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
    num_gpus: int | None = Field(
        default=None, description="GPUs to run this job across (1, 2, 4 or 8); reaches workers of that size."
    )
    webhook_url: str | None = Field(
        default=None, description="Receives this job's events, signed with `GET /v1/webhooks/default/secret`."
    )
    webhook_events: list[str] | None = Field(
        default=None,
        description="Which events to send to `webhook_url` (default: every state change; `video.progress` "
        "only when listed).",
        examples=[["video.completed", "video.failed"]],
    )

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
            num_gpus=self.num_gpus,
            webhook_url=self.webhook_url,
            webhook_events=self.webhook_events,
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
    seconds: float
    num_inference_steps: int
    guidance_scale: float
    seed: int
    num_gpus: int = 1
    attempts: int
    # The denoising step this attempt resumed after, from a checkpoint of an earlier attempt; None: from the start.
    resumed_from_step: int | None = None
    error: VideoError | None
    stage_timings: dict[str, Any] | None
    memory: dict[str, Any] | None = None
    webhook_url: str | None
    webhook_events: list[str] | None

    @classmethod
    def from_job(cls, job: Job, *, queue_position: int | None) -> VideoPublic:
        return cls.model_validate(job_to_public(job, queue_position=queue_position))


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


class WebhookEndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="An http(s) URL; private and loopback hosts are refused.")
    events: list[str] | None = Field(
        default=None, description="Events to send (default: every state change; `video.progress` only when listed)."
    )
    description: str = Field(default="", max_length=500)


class WebhookEndpointPublic(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[str] | None
    description: str
    status: Literal["enabled", "disabled"]
    disabled_reason: str | None
    disabled_at: int | None
    failing_since: int | None
    created_at: int

    @classmethod
    def from_endpoint(cls, endpoint: WebhookEndpoint) -> WebhookEndpointPublic:
        return cls(
            id=endpoint.id,
            url=endpoint.url,
            events=endpoint.events,
            description=endpoint.description,
            status="disabled" if endpoint.disabled_at else "enabled",
            disabled_reason=endpoint.disabled_reason,
            disabled_at=unix(endpoint.disabled_at),
            failing_since=unix(endpoint.failing_since),
            created_at=unix(endpoint.created_at) or 0,
        )


class WebhookEndpointWithSecret(WebhookEndpointPublic):
    """Returned at creation and rotation only: the one time the secret is shown."""

    secret: str


class WebhookEndpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookEndpointPublic]


class WebhookEndpointDeleted(BaseModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool = True


class WebhookSecret(BaseModel):
    key: str


class WebhookAttemptPublic(BaseModel):
    attempted_at: int
    status_code: int | None
    latency_ms: int | None
    response_snippet: str | None
    error: str | None
    next_attempt_at: int | None

    @classmethod
    def from_attempt(cls, attempt: WebhookAttempt) -> WebhookAttemptPublic:
        return cls(
            attempted_at=unix(attempt.attempted_at) or 0,
            status_code=attempt.status_code,
            latency_ms=attempt.latency_ms,
            response_snippet=attempt.response_snippet,
            error=attempt.error,
            next_attempt_at=unix(attempt.next_attempt_at),
        )


class WebhookDeliveryPublic(BaseModel):
    id: str = Field(description="The `webhook-id` header: the same on every attempt.")
    object: Literal["webhook_delivery"] = "webhook_delivery"
    video_id: str
    endpoint_id: str | None = Field(description="None: the job's own `webhook_url`.")
    url: str
    event_type: str
    status: Literal["pending", "succeeded", "failed"]
    created_at: int
    next_attempt_at: int | None
    last_error: str | None
    attempts: list[WebhookAttemptPublic]

    @classmethod
    def from_delivery(cls, delivery: WebhookDelivery) -> WebhookDeliveryPublic:
        pending = delivery.status == "pending"
        return cls(
            id=delivery.id,
            video_id=delivery.job_id,
            endpoint_id=delivery.endpoint_id,
            url=delivery.url,
            event_type=delivery.event_type,
            status=delivery.status,  # type: ignore[arg-type]
            created_at=unix(delivery.created_at) or 0,
            next_attempt_at=unix(delivery.next_attempt_at) if pending else None,
            last_error=delivery.last_error,
            attempts=[WebhookAttemptPublic.from_attempt(a) for a in delivery.attempt_log],
        )


class WebhookDeliveryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookDeliveryPublic]
