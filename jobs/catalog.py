"""What a client can ask for: each model's facts (``GET /v1/models``) and the request bounds over
every model (the API's schema constraints). Read from the registry, the one owner of model facts;
nothing here is a second list of them."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.errors import NotFound
from jobs.validation import MAX_SEED
from spec.memory import RequestShape, plan_memory
from spec.registry import (
    MAX_FPS,
    MAX_GUIDANCE,
    MAX_STEPS,
    MIN_FPS,
    MIN_GUIDANCE,
    MIN_STEPS,
    ModelSpec,
    UnknownModelError,
    format_seconds,
    get_spec,
    list_specs,
)
from spec.routing import GPU_GROUP_SIZES

GIB = 2**30


@dataclass(frozen=True)
class RequestBounds:
    """The widest value of each request field that some model accepts."""

    min_frames: int
    max_frames: int
    max_prompt_chars: int
    min_fps: int = MIN_FPS
    max_fps: int = MAX_FPS
    min_steps: int = MIN_STEPS
    max_steps: int = MAX_STEPS
    min_guidance: float = MIN_GUIDANCE
    max_guidance: float = MAX_GUIDANCE
    max_seed: int = MAX_SEED
    max_gpus: int = max(GPU_GROUP_SIZES)


def request_bounds() -> RequestBounds:
    specs = list_specs()
    return RequestBounds(
        min_frames=min(s.min_frames for s in specs),
        max_frames=max(s.max_frames for s in specs),
        max_prompt_chars=max(s.max_prompt_chars for s in specs),
    )


@dataclass(frozen=True)
class GpuMemoryEstimate:
    """The planner's estimate for the model's default request, in GiB: everything resident, and the
    least it can run in (layer-wise offload with no resident block and a tiled VAE)."""

    default_request_gib: float
    minimum_gib: float


def gpu_memory_estimate(spec: ModelSpec) -> GpuMemoryEstimate | None:
    """None for a model whose footprint the planner does not know (the tiny test model)."""
    footprint = spec.footprint
    if footprint is None:
        return None
    shape = RequestShape(spec.default_width, spec.default_height, spec.default_frames, cfg=spec.default_guidance > 1)
    resident = plan_memory(footprint, shape, None, offload="none", vae_tiling="off")
    smallest = plan_memory(footprint, shape, None, offload="layerwise", resident_blocks=0, vae_tiling="on")
    return GpuMemoryEstimate(
        default_request_gib=round(resident.estimated_peak_bytes / GIB, 1),
        minimum_gib=round(smallest.estimated_peak_bytes / GIB, 1),
    )


def get_model(name: str) -> ModelSpec:
    try:
        return get_spec(name)
    except UnknownModelError:
        known = ", ".join(s.name for s in list_specs())
        raise NotFound(f"no model {name!r}; known: {known}", param="model") from None


def list_models() -> list[ModelSpec]:
    return list_specs()


__all__ = [
    "GpuMemoryEstimate",
    "ModelSpec",
    "RequestBounds",
    "format_seconds",
    "get_model",
    "gpu_memory_estimate",
    "list_models",
    "request_bounds",
]
