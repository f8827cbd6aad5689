"""Seeded starting noise, bit-identical to diffusers' WanPipeline for the same seed."""

from __future__ import annotations

from typing import ClassVar

import torch

from engine.stages.base import Stage
from engine.stages.state import PipelineState
from spec.stages import Stage as StageName


def latent_shape(
    num_frames: int, height: int, width: int, channels: int, temporal_factor: int, spatial_factor: int
) -> tuple[int, int, int, int, int]:
    """[1, C, (F - 1) // t + 1, H / s, W / s]: the VAE keeps the first frame and compresses the rest."""
    return (
        1,
        channels,
        (num_frames - 1) // temporal_factor + 1,
        height // spatial_factor,
        width // spatial_factor,
    )


class LatentPreparationStage(Stage):
    """Draws float32 Gaussian noise from a CPU generator seeded with the request's seed.

    The CPU generator makes a seed mean the same video on every device (CUDA generators differ
    from CPU ones); the noise is then moved to the device. This matches WanPipeline when it is
    given `torch.Generator("cpu").manual_seed(seed)`.
    """

    name: ClassVar[str] = StageName.LATENT_PREPARATION
    provides: ClassVar[tuple[str, ...]] = ("latents",)
    announced: ClassVar[bool] = False

    def __init__(self, device: torch.device, channels: int, temporal_factor: int, spatial_factor: int) -> None:
        super().__init__(device)
        self.channels = channels
        self.temporal_factor = temporal_factor
        self.spatial_factor = spatial_factor

    def forward(self, state: PipelineState) -> None:
        request = state.request
        shape = latent_shape(
            request.num_frames,
            request.height,
            request.width,
            self.channels,
            self.temporal_factor,
            self.spatial_factor,
        )
        generator = torch.Generator("cpu").manual_seed(request.seed)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        state.latents = noise.to(self.device)
        state.generator = generator  # its state is part of a denoising checkpoint
