"""What a caller asks the engine for, what it gets back, and what it sees per step.

Torch and numpy appear only in annotations here, so these types import without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spec.acceleration import LOSSLESS, AccelerationOptions, parse_acceleration

if TYPE_CHECKING:
    import numpy as np
    import PIL.Image
    import torch

    from spec.memory import MemoryPlan


# The experts of a two-expert model (Wan2.2 A14B), as `LoraRef.expert` names them.
HIGH_NOISE_EXPERT = 0  # transformer/: the steps with t >= boundary_ratio x 1000
LOW_NOISE_EXPERT = 1  # transformer_2/: the rest


@dataclass(frozen=True)
class LoraRef:
    """One adapter a request applies: `key` names its content (the engine caches by it), `path`
    is a local .safetensors file to read on a cache miss, `scale` its strength (0 = not applied).

    `expert`: which transformer of a two-expert model (Wan2.2 A14B) it goes into: None (the
    default) every one, as most single-file adapters are meant; `HIGH_NOISE_EXPERT` (0,
    `transformer/`) or `LOW_NOISE_EXPERT` (1, `transformer_2/`) for one file of a published
    high-noise/low-noise pair (diffusers: `load_lora_weights(..., load_into_transformer_2=True)`
    for the second). A one-transformer model has only expert 0.

    Paths, not tensors, so a request stays cheap to send to the other ranks of a GPU group.
    """

    key: str
    path: str
    scale: float = 1.0
    expert: int | None = None

    def applies_to(self, expert: int) -> bool:
        return self.expert is None or self.expert == expert


@dataclass
class GenerationRequest:
    """Per-request sampling parameters (the third configuration layer, after settings and spec).

    `num_frames` must follow the model's frame rule (4k + 1 for Wan) and `width`/`height` be one of
    its sizes; the engine checks them against the model's spec when it has one. `guidance_scale`
    <= 1 disables classifier-free guidance (one transformer pass per step instead of two). `loras`
    are applied for this request only (see `engine.lora`); `flow_shift`, when set, replaces the
    model's for this request (step-distilled adapters are trained for their own). `acceleration`
    is a preset name, a mapping of options or `AccelerationOptions` (see
    `spec.acceleration`), normalised to `AccelerationOptions`; the default is lossless.
    """

    prompt: str
    width: int
    height: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    fps: int
    negative_prompt: str = ""
    loras: tuple[LoraRef, ...] = ()
    flow_shift: float | None = None
    # The first frame of an image-to-video request (a PIL image at any size: the pipeline resizes
    # it to width x height); None for text-to-video.
    image: PIL.Image.Image | None = None
    # The low-noise expert's guidance (two-expert models); None: the model's default.
    guidance_scale_2: float | None = None
    acceleration: AccelerationOptions = LOSSLESS

    def __post_init__(self) -> None:
        # dataclasses.asdict (how requests cross to other processes) turns the options into a dict.
        self.acceleration = parse_acceleration(self.acceleration)

    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1.0


@dataclass(frozen=True)
class StepInfo:
    """Passed to `on_step` after each denoising step.

    `step` is 1-based (1..total); `elapsed_s` counts from the start of the denoising loop;
    `latents` is the live tensor, for Wan [1, 16, F', H/8, W/8]; for the diffusers backend's families
    in the layout of their pipeline's loop (LTX's are packed [1, tokens, C]). Read it, do not modify it.
    """

    step: int
    total: int
    elapsed_s: float
    latents: torch.Tensor


@dataclass
class GenerationResult:
    """A finished generation.

    `frames` is uint8 [F, H, W, 3]. `stage_timings_s` maps stage names to wall seconds.
    `peak_memory_bytes` is the peak accelerator memory over the run (None on CPU).
    `video_path`/`thumbnail_path` are set when the caller asked for an mp4.
    `stage_peak_memory_bytes` maps stage names to their peak CUDA memory (empty on the CPU).
    `memory_plan` is the planner's choice for this request (`engine.memory.MemoryPlan`; its
    `to_dict()` is JSON-ready for a job record).
    `resumed_from_step` is the step a checkpoint let denoising start after (None: from the start).
    `lora_mode` says how the request's adapters were applied (None without adapters).
    `acceleration` is what the fast modes did (`DenoisingStage` fills it: options, steps
    computed and skipped, precision), JSON-ready.
    """

    frames: np.ndarray
    stage_timings_s: dict[str, float]
    peak_memory_bytes: int | None
    seed: int
    latents: torch.Tensor
    video_path: Path | None = None
    thumbnail_path: Path | None = None
    stage_peak_memory_bytes: dict[str, int] = field(default_factory=dict)
    memory_plan: MemoryPlan | None = None
    resumed_from_step: int | None = None
    lora_mode: str | None = None  # "fused" or "runtime" when adapters were applied
    acceleration: dict[str, Any] | None = None
