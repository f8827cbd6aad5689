"""Checks a job request against the model registry and fills in the model's defaults.

The registry (``spec.registry``) is the one place that knows sizes, frame rules and defaults, and
``spec.routing`` the one that names queues; both are torch-free, so the API imports them without
the engine.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from jobs.errors import InvalidParameter
from spec.acceleration import AccelerationError, resolve_acceleration
from spec.registry import (
    MAX_FPS,
    MIN_FPS,
    ModelSpec,
    SpecViolationError,
    UnknownModelError,
    get_spec,
    list_specs,
    parse_size,
)
from spec.routing import GPU_GROUP_SIZES, queue_for

MAX_SEED = 2**32 - 1


# Read from a request at most this much of an `input_reference` (a guard for the API's memory; the
# image's own checks, for models that take one, come after).
MAX_INPUT_REFERENCE_BYTES = 20 * 2**20


@dataclass(frozen=True)
class InputReference:
    """An image a client sent with a job (a multipart file part or a JSON ``data:`` URL), undecoded:
    the bytes as received and the content type the client declared."""

    data: bytes = field(repr=False)
    content_type: str
    filename: str | None = None


MIN_FLOW_SHIFT, MAX_FLOW_SHIFT = 0.1, 20.0


def check_flow_shift(value: float | None, param: str = "flow_shift") -> None:
    if value is not None and not (math.isfinite(value) and MIN_FLOW_SHIFT <= value <= MAX_FLOW_SHIFT):
        raise InvalidParameter(f"flow_shift must be in [{MIN_FLOW_SHIFT}, {MAX_FLOW_SHIFT}]", param=param)


@dataclass(frozen=True)
class LoraChoice:
    """One entry of a request's ``loras``: an adapter id and its strength. Two-expert models only:
    ``id_2`` is the low-noise expert's adapter when it is another file (``id`` then goes into the
    high-noise expert only) and ``scale_2`` its strength there; None: the same as ``id`` / ``scale``."""

    id: str
    scale: float = 1.0
    id_2: str | None = None
    scale_2: float | None = None

    @property
    def per_expert(self) -> bool:
        """True when the experts get different adapters or strengths (the job records both)."""
        return self.id_2 is not None or self.scale_2 is not None


@dataclass(frozen=True)
class JobRequest:
    """What a client asked for; ``None`` means "the model's default".

    ``seconds`` is OpenAI's way to ask for a length: it becomes the nearest allowed ``num_frames``
    at the request's fps (and must agree with ``num_frames`` when both are given).
    """

    prompt: str
    model: str
    negative_prompt: str = ""
    size: str | None = None
    num_frames: int | None = None
    fps: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    num_gpus: int | None = None
    webhook_url: str | None = None
    webhook_events: list[str] | None = None  # None: every state change; checked in jobs.webhooks
    seconds: float | None = None
    input_reference: InputReference | None = None
    loras: tuple[LoraChoice, ...] = ()  # resolved in jobs.loras (they live in the database)
    flow_shift: float | None = None
    acceleration: object = None  # a preset name, a mapping of options, or None ("none")


@dataclass(frozen=True)
class JobParams:
    """A fully resolved, valid request: every field set, the seed drawn if it was not given."""

    model: str
    queue: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_frames: int
    fps: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    num_gpus: int = 1
    loras: list[dict[str, Any]] | None = None  # [{"id", "name", "scale"}], from jobs.loras
    flow_shift: float | None = None
    # The fast-mode options, resolved (spec.acceleration, `to_dict()`); None: lossless.
    acceleration: dict[str, Any] | None = None


def resolve_job_params(request: JobRequest) -> JobParams:
    """Validate ``request`` and return it with defaults filled in; raise InvalidParameter naming the field."""
    try:
        spec = get_spec(request.model)
    except UnknownModelError:
        known = ", ".join(s.name for s in list_specs())
        raise InvalidParameter(f"unknown model {request.model!r}; known: {known}", param="model") from None

    size = request.size or spec.default_size
    try:
        width, height = parse_size(size)
    except ValueError as exc:
        raise InvalidParameter(str(exc), param="size") from None
    steps = spec.default_steps if request.num_inference_steps is None else request.num_inference_steps
    guidance = spec.default_guidance if request.guidance_scale is None else request.guidance_scale
    fps = spec.default_fps if request.fps is None else request.fps
    if request.input_reference is not None and not spec.takes_image:
        raise InvalidParameter(
            f"{spec.name} is a text-to-video model and takes no input_reference image; send the prompt alone",
            param="input_reference",
        )
    try:
        num_frames = _frames(spec, request, fps)
        spec.validate(
            width=width,
            height=height,
            num_frames=num_frames,
            num_inference_steps=steps,
            guidance_scale=guidance,
            fps=fps,
            prompt=request.prompt,
            has_image=request.input_reference is not None,  # an image-to-video model needs one
        )
    except SpecViolationError as exc:
        raise InvalidParameter(exc.message, param=exc.param) from None
    if len(request.negative_prompt) > spec.max_prompt_chars:
        raise InvalidParameter(
            f"negative_prompt longer than {spec.max_prompt_chars} characters", param="negative_prompt"
        )

    num_gpus = 1 if request.num_gpus is None else request.num_gpus
    if num_gpus not in GPU_GROUP_SIZES:
        raise InvalidParameter(
            f"num_gpus must be one of {', '.join(map(str, GPU_GROUP_SIZES))}, got {num_gpus}", param="num_gpus"
        )
    if num_gpus > spec.max_gpus:
        raise InvalidParameter(
            f"{spec.name} runs on at most {spec.max_gpus} GPU{'s' if spec.max_gpus > 1 else ''}, "
            f"got num_gpus={num_gpus}",
            param="num_gpus",
        )

    check_flow_shift(request.flow_shift)
    try:
        acceleration = resolve_acceleration(
            request.acceleration, supported=spec.acceleration, num_inference_steps=steps
        )
    except AccelerationError as exc:
        raise InvalidParameter(exc.message, param=exc.param) from None

    seed = secrets.randbelow(MAX_SEED + 1) if request.seed is None else request.seed
    if not 0 <= seed <= MAX_SEED:
        raise InvalidParameter(f"seed must be between 0 and {MAX_SEED}, got {seed}", param="seed")

    return JobParams(
        model=spec.name,
        queue=queue_for(spec, num_gpus),
        prompt=request.prompt.strip(),
        negative_prompt=request.negative_prompt,
        width=width,
        height=height,
        num_frames=num_frames,
        fps=fps,
        num_inference_steps=steps,
        guidance_scale=float(guidance),
        seed=seed,
        num_gpus=num_gpus,
        flow_shift=request.flow_shift,
        acceleration=None if acceleration.lossless else acceleration.to_dict(),
    )


def _frames(spec: ModelSpec, request: JobRequest, fps: int) -> int:
    """The frame count from ``num_frames`` or ``seconds`` (or the model's default)."""
    if request.seconds is None:
        return spec.default_frames if request.num_frames is None else request.num_frames
    if not MIN_FPS <= fps <= MAX_FPS:  # checked here too: fps divides the seconds
        raise SpecViolationError("fps", f"fps must be in [{MIN_FPS}, {MAX_FPS}]")
    from_seconds = spec.frames_for_seconds(request.seconds, fps)
    if request.num_frames is not None and request.num_frames != from_seconds:
        raise SpecViolationError(
            "seconds",
            f"seconds={request.seconds:g} means {from_seconds} frames at {fps} fps, but num_frames is "
            f"{request.num_frames}; send one of them",
        )
    return from_seconds


def list_model_names() -> list[str]:
    """Every model in the registry (what the admin's model filter offers)."""
    return sorted(spec.name for spec in list_specs())
