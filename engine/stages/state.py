"""The one object a pipeline's stages read from and write to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.checkpoint import Checkpointer
from spec.memory import MemoryPlan
from spec.request import GenerationRequest, StepInfo

OnStep = Callable[[StepInfo], None]
OnStage = Callable[[str], None]


@dataclass
class PipelineState:
    """A request travelling through the stages; each stage fills in the fields it provides.

    Tensor shapes (batch 1, C = 16 latent channels (48 for the Wan2.2 VAE), F' = (F - 1) // 4 + 1,
    h, w = H, W over the VAE's spatial factor (8, or 16 for the Wan2.2 VAE)):
    prompt_embeds / negative_prompt_embeds [1, 512, text_dim]; latents [1, C, F', h, w]
    float32; frames uint8 [F, H, W, 3].
    """

    request: GenerationRequest
    on_step: OnStep | None = None
    on_stage: OnStage | None = None
    output_path: Path | None = None
    memory_plan: MemoryPlan | None = None  # decides the VAE tiling; None = untiled
    # Saves and restores the denoising loop's state (see engine.checkpoint); None = no checkpoints.
    checkpointer: Checkpointer | None = None
    checkpoint_fingerprint: str = ""  # the model and request a checkpoint must match

    # The diffusers backend (`engine.pipelines.diffusers_backend`): the embeddings as keyword
    # arguments of the family's pipeline.
    conditioning: dict[str, torch.Tensor | None] | None = None

    prompt_embeds: torch.Tensor | None = None
    negative_prompt_embeds: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    generator: torch.Generator | None = None  # the request's random generator, after the initial noise
    resumed_from_step: int | None = None  # set when denoising continued from a checkpoint
    # Image-to-video (engine.stages.image_encoding / image_conditioning): CLIP tokens
    # [1, L_img, image_dim]; the VAE-encoded first frame, [1, 4 + z, F', h, w] (mask channels +
    # latents) or, for TI2V, [1, z, 1, h, w] with `first_frame_mask` [1, 1, F', h, w].
    image_embeds: torch.Tensor | None = None
    condition: torch.Tensor | None = None
    first_frame_mask: torch.Tensor | None = None
    frames: np.ndarray | None = None
    video_path: Path | None = None
    thumbnail_path: Path | None = None

    acceleration: dict[str, Any] | None = None  # what the fast modes did (DenoisingStage)

    stage_timings_s: dict[str, float] = field(default_factory=dict)
    stage_peak_memory_bytes: dict[str, int] = field(default_factory=dict)
