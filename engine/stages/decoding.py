"""Latents -> uint8 video frames through the Wan VAE."""

from __future__ import annotations

from typing import ClassVar

import torch

from engine.memory.vae_tiling import decode_tiled
from engine.stages.base import Stage
from engine.stages.state import PipelineState
from spec.stages import Stage as StageName


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """VAE output [1, 3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3] (rounded, clamped)."""
    video = (video[0].float() / 2 + 0.5).clamp(0, 1)  # [3, F, H, W] in [0, 1]
    return (video * 255).round().to(torch.uint8).permute(1, 2, 3, 0)  # [F, H, W, 3]


class DecodingStage(Stage):
    """Un-normalises the latents with the VAE's per-channel mean/std and decodes them.

    The arithmetic (latents / (1 / std) + mean, in the VAE's dtype) is WanPipeline's, so frames
    match it. The VAE runs in float32, as in the reference: it is small and bf16 bands colours.
    When the request's memory plan says so, the decode runs in overlapping spatial tiles
    (`engine.memory.vae_tiling`), streamed over time.
    """

    name: ClassVar[str] = StageName.DECODING
    requires: ClassVar[tuple[str, ...]] = ("latents",)
    provides: ClassVar[tuple[str, ...]] = ("frames",)

    def __init__(self, device: torch.device, vae: torch.nn.Module) -> None:
        super().__init__(device)
        self.vae = vae
        z_dim = vae.config.z_dim
        dtype = next(vae.parameters()).dtype
        self.latents_mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(device, dtype)
        self.latents_inv_std = (1.0 / torch.tensor(vae.config.latents_std)).view(1, z_dim, 1, 1, 1).to(device, dtype)

    def forward(self, state: PipelineState) -> None:
        latents = state.latents.to(self.latents_mean.device, self.latents_mean.dtype)  # [1, 16, F', H', W']
        latents = latents / self.latents_inv_std + self.latents_mean
        plan = state.memory_plan
        if plan is not None and plan.vae_tiling and plan.vae_tile is not None:
            video = decode_tiled(self.vae, latents, plan.vae_tile, plan.vae_tile_overlap)  # [1, 3, F, H, W]
        else:
            video = self.vae.decode(latents, return_dict=False)[0]  # [1, 3, F, H, W]
        state.frames = to_uint8_frames(video).cpu().numpy()
