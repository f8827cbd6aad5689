"""Request and response bodies of ``/v1/videos``, shaped like OpenAI's Videos API."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from jobs.catalog import ModelSpec, format_seconds, gpu_memory_estimate, request_bounds
from jobs.errors import InvalidParameter
from jobs.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from jobs.public import VideoPublic, unix
from jobs.text import INVALID_TEXT_MESSAGE, first_bad_text
from jobs.validation import MAX_FLOW_SHIFT, MIN_FLOW_SHIFT, InputReference, JobRequest, LoraChoice
from jobs.webhooks.outbox import receives

# Bounds over every model, as schema constraints; each model's own range is checked after (422 naming the field).
BOUNDS = request_bounds()

# OpenAI's SDK sends `seconds` as a string ("4"); JSON clients may send a number.
Seconds = Annotated[
    float,
    Field(gt=0, le=BOUNDS.max_frames / BOUNDS.min_fps),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "maximum": BOUNDS.max_frames / BOUNDS.min_fps},
                {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
            ],
            "description": 'Length in seconds, a number or a numeric string (`"4"`): mapped to the model\'s '
            "nearest allowed frame count at `fps` (`num_frames` / `fps` seconds).",
            "examples": ["4"],
        }
    ),
]


class TextInput(BaseModel):
    """A request body whose strings (nested ones too) must be storable text (``jobs.text``): a NUL
    or a lone surrogate is a 422 naming the field, before it can reach the database as a 500."""

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        bad = first_bad_text(data)
        if bad is not None:
            raise InvalidParameter(f"{bad or 'body'} {INVALID_TEXT_MESSAGE}", param=bad or "body")
        return data


class LoraUse(TextInput):
    """One adapter of a job: an id from `GET /v1/loras` and its strength; on a two-expert model
    (Wan2.2 A14B) it goes into both experts unless `id_2` / `scale_2` say otherwise."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(max_length=40, description="A LoRA id (`lora_...`).")
    scale: float = Field(default=1.0, ge=-4.0, le=4.0, description="Strength; 0 applies nothing.")
    id_2: str | None = Field(
        default=None,
        max_length=40,
        description="Two-expert models only: the low-noise expert's adapter (the second file of a published "
        "high-noise/low-noise pair); `id` then goes into the high-noise expert only. Default: `id` in both.",
    )
    scale_2: float | None = Field(
        default=None,
        ge=-4.0,
        le=4.0,
        description="Two-expert models only: the strength in the low-noise expert (default: `scale`; 0: none there).",
    )


class ImageUrlReference(TextInput):
    """OpenAI's JSON form of `input_reference`."""

    model_config = ConfigDict(extra="forbid")

    image_url: str = Field(description="A `data:image/...;base64,...` URL (vidq fetches no remote URL).")


class VideoCreate(TextInput):
    """Omitted fields take the model's defaults from the registry; the seed is drawn and recorded.

    Sent as `application/json` or as `multipart/form-data` (what OpenAI's SDK sends) with the same
    fields; list fields as repeated form fields (`webhook_events[]` or `webhook_events`).
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="What the video shows.", min_length=1, max_length=BOUNDS.max_prompt_chars)
    model: str | None = Field(default=None, description="A model id from `GET /v1/models`, e.g. `wan2.1-t2v-1.3b`.")
    negative_prompt: str = Field(default="", max_length=BOUNDS.max_prompt_chars)
    size: str | None = Field(
        default=None,
        description="`WIDTHxHEIGHT`, one of the model's `sizes` (its `openai_sizes` are the OpenAI sizes it serves).",
        examples=["1280x720"],
    )
    seconds: Seconds | None = None
    num_frames: int | None = Field(
        default=None,
        ge=BOUNDS.min_frames,
        le=BOUNDS.max_frames,
        description="4k+1 frames, within the model's range; agrees with `seconds` when both are sent.",
    )
    fps: int | None = Field(default=None, ge=BOUNDS.min_fps, le=BOUNDS.max_fps)
    num_inference_steps: int | None = Field(default=None, ge=BOUNDS.min_steps, le=BOUNDS.max_steps)
    guidance_scale: float | None = Field(default=None, ge=BOUNDS.min_guidance, le=BOUNDS.max_guidance)
    seed: int | None = Field(default=None, ge=0, le=BOUNDS.max_seed)
    num_gpus: int | None = Field(
        default=None,
        ge=1,
        le=BOUNDS.max_gpus,
        description="GPUs to run this job across (1, 2, 4 or 8); reaches workers of that size.",
    )
    webhook_url: str | None = Field(
        default=None,
        max_length=2000,
        description="Receives this job's events, signed with `GET /v1/webhooks/default/secret`.",
    )
    webhook_events: list[str] | None = Field(
        default=None,
        description="Which events to send to `webhook_url` (default: every state change; `video.progress` "
        "only when listed).",
        examples=[["video.completed", "video.failed"]],
    )
    input_reference: str | ImageUrlReference | None = Field(
        default=None,
        description='An image for image-to-video models: in JSON a `data:` URL (or `{"image_url": ...}`), in '
        "multipart a file part. Text-to-video models refuse it (422 naming `input_reference`).",
    )
    loras: list[LoraUse] | None = Field(
        default=None,
        max_length=4,
        description='LoRA adapters to apply, e.g. `[{"id": "lora_01J...", "scale": 0.8}]` (in multipart: '
        "the same list as one JSON-encoded field). Settings the request leaves out take the adapters' "
        "recommended values (steps, guidance, flow shift). Two-expert models (Wan2.2 A14B) apply each to "
        'both experts; a high-noise/low-noise pair is one entry `{"id": HIGH, "id_2": LOW}`.',
    )
    flow_shift: float | None = Field(
        default=None,
        ge=MIN_FLOW_SHIFT,
        le=MAX_FLOW_SHIFT,
        description="The sampler's flow shift (default: an adapter's recommendation, else the model's).",
    )

    acceleration: str | dict[str, Any] | None = Field(
        default=None,
        description="Fast modes: `none` (default: lossless), a preset (`balanced`, `fast`) or an object of options "
        "(`preset`, `cache`: teacache|magcache|fbcache, `threshold`, `warmup_steps`, `final_steps`, "
        "`max_consecutive_skips`, `fp8`, `skip_steps`). `GET /v1/models` lists what each model supports.",
        examples=["fast", {"cache": "magcache", "threshold": 0.12, "fp8": False}],
    )

    @field_validator("acceleration", mode="before")
    @classmethod
    def _acceleration_from_form(cls, value: Any) -> Any:
        """A multipart form sends the options object as one JSON-encoded text part."""
        if isinstance(value, str) and value.lstrip().startswith("{"):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError("acceleration must be a preset name or a JSON object of options") from None
        return value

    @field_validator("loras", mode="before")
    @classmethod
    def _loras_from_form(cls, value: Any) -> Any:
        """A multipart form carries the list as one JSON-encoded text field."""
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            value = value[0]
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError("loras must be a JSON list of {id, scale} objects") from None
        return value

    def to_request(self, default_model: str, input_reference: InputReference | None = None) -> JobRequest:
        """The domain's request; ``input_reference`` is the decoded image (see ``api.video_body``)."""
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
            seconds=self.seconds,
            input_reference=input_reference,
            loras=tuple(LoraChoice(use.id, use.scale, use.id_2, use.scale_2) for use in self.loras or ()),
            flow_shift=self.flow_shift,
            acceleration=self.acceleration,
        )


class VideoCreateForm(VideoCreate):
    """`POST /v1/videos` as `multipart/form-data`: the same fields as text parts, and the image as a file."""

    input_reference: bytes | None = Field(  # type: ignore[assignment]
        default=None,
        description="An image file (image-to-video models only).",
        json_schema_extra={"format": "binary"},
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


class WebhookEndpointCreate(TextInput):
    """vidq's field names or OpenAI's SDK's (`event_types` for `events`, `name` for `description`): either works."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2000, description="An http(s) URL; private and loopback hosts are refused.")
    events: list[str] | None = Field(
        default=None, description="Events to send (default: every state change; `video.progress` only when listed)."
    )
    event_types: list[str] | None = Field(default=None, description="OpenAI's name for `events`.")
    description: str | None = Field(default=None, max_length=500)
    name: str | None = Field(default=None, max_length=500, description="OpenAI's name for `description`.")

    def chosen_events(self) -> list[str] | None:
        return _one_of(self.events, self.event_types, "events", "event_types")

    def chosen_description(self) -> str:
        return _one_of(self.description, self.name, "description", "name") or ""


def _one_of(ours: Any, theirs: Any, our_name: str, their_name: str) -> Any:
    """The value under either name; both may be sent only when they agree."""
    if ours is not None and theirs is not None and ours != theirs:
        raise InvalidParameter(
            f"{their_name} and {our_name} are the same field and disagree; send one", param=their_name
        )
    return ours if ours is not None else theirs


class WebhookEndpointPublic(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[str] | None = Field(description="The filter as registered; None: every state change.")
    event_types: list[str] = Field(description="The events this endpoint receives (OpenAI's field).")
    description: str
    name: str = Field(description="OpenAI's name for `description`.")
    signing_secret_hint: str = Field(description="The secret's last characters, to tell secrets apart.")
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
            event_types=receives(endpoint.events),
            description=endpoint.description,
            name=endpoint.description,
            signing_secret_hint=f"whsec_...{endpoint.secret[-4:]}",
            status="disabled" if endpoint.disabled_at else "enabled",
            disabled_reason=endpoint.disabled_reason,
            disabled_at=unix(endpoint.disabled_at),
            failing_since=unix(endpoint.failing_since),
            created_at=unix(endpoint.created_at) or 0,
        )


class WebhookEndpointWithSecret(WebhookEndpointPublic):
    """Returned at creation and rotation only: the one time the secret is shown."""

    secret: str
    signing_secret: str = Field(description="OpenAI's name for `secret`.")


class WebhookEndpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookEndpointPublic]
    first_id: str | None
    last_id: str | None
    has_more: bool


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


class FrameRule(BaseModel):
    min: int
    max: int
    step: int = Field(description="Allowed counts are `k * step + 1` (4k+1 for Wan's VAE, 8k+1 for LTX-Video).")
    default: int
    allowed: list[int]


class GpuMemory(BaseModel):
    default_request_gib: float = Field(description="The model's default request, everything on the GPU.")
    minimum_gib: float = Field(description="The least it runs in: layer-wise offload and a tiled VAE.")


class ModelPublic(BaseModel):
    """A model as `GET /v1/models` lists it: OpenAI's fields (`id`, `object`, `created`, `owned_by`), then vidq's."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(0, description="Always 0: vidq does not track when a model was published.")
    owned_by: str = "vidq"
    family: str
    description: str
    hub_id: str | None = Field(description="The diffusers checkpoint it loads, when it is a published one.")
    sizes: list[str] = Field(description="Every `size` it accepts (`WIDTHxHEIGHT`).")
    openai_sizes: list[str] = Field(description="The sizes of OpenAI's Videos API among them.")
    default_size: str
    frames: FrameRule
    default_fps: int
    fps_range: tuple[int, int]
    seconds_range: tuple[str, str] = Field(description="Shortest and longest clip at `default_fps`, in seconds.")
    default_steps: int
    default_guidance: float
    max_prompt_chars: int
    takes_image: bool = Field(description="Whether `input_reference` (image-to-video) is accepted.")
    acceleration: list[str] = Field(
        default_factory=list,
        description="The fast modes it offers in `acceleration`: cache methods (`teacache`, `magcache`, `fbcache`) "
        "and `fp8`. Empty: only `none`.",
    )
    gpu_memory: GpuMemory | None = Field(description="The planner's estimate; None when it has no footprint.")

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ModelPublic:
        estimate = gpu_memory_estimate(spec)
        bounds = request_bounds()
        return cls(
            id=spec.name,
            family=spec.family,
            description=spec.description,
            hub_id=spec.hub_id,
            sizes=list(spec.sizes),
            openai_sizes=list(spec.openai_sizes),
            default_size=spec.default_size,
            frames=FrameRule(
                min=spec.min_frames,
                max=spec.max_frames,
                step=spec.frame_step,
                default=spec.default_frames,
                allowed=spec.allowed_frames(),
            ),
            default_fps=spec.default_fps,
            fps_range=(bounds.min_fps, bounds.max_fps),
            seconds_range=(
                format_seconds(spec.min_frames, spec.default_fps),
                format_seconds(spec.max_frames, spec.default_fps),
            ),
            default_steps=spec.default_steps,
            default_guidance=spec.default_guidance,
            max_prompt_chars=spec.max_prompt_chars,
            takes_image=spec.takes_image,
            acceleration=list(spec.acceleration),
            gpu_memory=GpuMemory(**asdict(estimate)) if estimate is not None else None,
        )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelPublic]


class LoraPublic(BaseModel):
    """A LoRA adapter as clients see it (`GET /v1/loras/{id}`)."""

    id: str
    object: Literal["lora"] = "lora"
    name: str
    model: str = Field(description="The model it was trained for; jobs of other models refuse it.")
    format: str = Field(description="The key layout it was uploaded in: `diffusers`, `wan` or `kohya`.")
    rank: int
    size_bytes: int
    sha256: str
    recommended: dict[str, Any] = Field(
        description="Settings a job takes when its request leaves them out: `num_inference_steps`, "
        "`guidance_scale`, `flow_shift`."
    )
    public: bool = Field(description="Published by an admin to every client.")
    use_count: int = Field(description="Jobs submitted with it.")
    created_at: int

    @classmethod
    def from_lora(cls, lora: Any) -> LoraPublic:
        from jobs.loras import lora_to_public

        return cls.model_validate(lora_to_public(lora))


class LoraList(BaseModel):
    object: Literal["list"] = "list"
    data: list[LoraPublic]
    first_id: str | None
    last_id: str | None
    has_more: bool


class LoraDeleted(BaseModel):
    id: str
    object: Literal["lora.deleted"] = "lora.deleted"
    deleted: bool = True
