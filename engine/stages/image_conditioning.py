"""The first frame, VAE-encoded into what the DiT is conditioned on (WanImageToVideoPipeline's
`prepare_latents`, same arithmetic).

Two conditioning schemes, chosen by the checkpoint:

- Wan2.1 I2V and Wan2.2 I2V-A14B (`in_channels` 36): the image followed by F - 1 black frames
  is encoded as one video; its latents [1, 16, F', h, w] are normalised and put behind a 4-channel
  mask that marks the first frame as known -> condition [1, 20, F', h, w], concatenated to the
  noisy latents on the channel axis at every step.
- Wan2.2 TI2V (`expand_timesteps`): the image alone is encoded to one latent frame
  [1, 48, 1, h, w]; at every step it replaces the first latent frame of the model input, whose
  tokens are given timestep 0 (`first_frame_mask` [1, 1, F', h, w] is 0 there, 1 elsewhere).

The image is resized to the request's width x height by diffusers' `VideoProcessor` (Lanczos,
no aspect-ratio preservation: callers that care crop first, as the service does).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from engine.stages.base import Stage
from engine.stages.state import PipelineState
from spec.stages import Stage as StageName


def preprocess_image(image: object, height: int, width: int) -> torch.Tensor:
    """PIL image -> [1, 3, height, width] float32 in [-1, 1], as WanImageToVideoPipeline does."""
    from diffusers.video_processor import VideoProcessor

    return VideoProcessor(vae_scale_factor=8).preprocess(image, height=height, width=width).float()


class ImageConditioningStage(Stage):
    name: ClassVar[str] = StageName.IMAGE_CONDITIONING
    requires: ClassVar[tuple[str, ...]] = ("latents",)
    provides: ClassVar[tuple[str, ...]] = ("condition",)
    announced: ClassVar[bool] = False

    def __init__(self, device: torch.device, vae: torch.nn.Module, expand_timesteps: bool) -> None:
        super().__init__(device)
        self.vae = vae
        self.expand_timesteps = expand_timesteps
        config = vae.config
        self.temporal_factor = config.scale_factor_temporal
        self.latents_mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1)
        self.latents_inv_std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1)

    def enabled(self, state: PipelineState) -> bool:
        return state.request.image is not None

    def forward(self, state: PipelineState) -> None:
        request = state.request
        _, _, latent_frames, latent_h, latent_w = state.latents.shape
        vae_device = next(self.vae.parameters()).device
        vae_dtype = next(self.vae.parameters()).dtype
        image = preprocess_image(request.image, request.height, request.width).unsqueeze(2)  # [1, 3, 1, H, W]
        if self.expand_timesteps:
            video = image
        else:
            black = image.new_zeros(1, 3, request.num_frames - 1, request.height, request.width)
            video = torch.cat([image, black], dim=2)  # [1, 3, F, H, W]
        latents = self.vae.encode(video.to(vae_device, vae_dtype)).latent_dist.mode()  # [1, z, F' or 1, h, w]
        latents = latents.to(self.device, torch.float32)
        mean, inv_std = self.latents_mean.to(self.device), self.latents_inv_std.to(self.device)
        condition = (latents - mean) * inv_std

        if self.expand_timesteps:
            mask = torch.ones(1, 1, latent_frames, latent_h, latent_w, device=self.device)
            mask[:, :, 0] = 0
            state.first_frame_mask = mask  # [1, 1, F', h, w]
            state.condition = condition  # [1, z, 1, h, w]
            return
        # 1 for each known video frame (the first), repeated x4 so that the first latent frame,
        # which stands for one video frame, has as many mask channels as the others (4 frames).
        mask = torch.zeros(1, 1, request.num_frames, latent_h, latent_w, device=self.device)
        mask[:, :, 0] = 1
        mask = torch.cat([mask[:, :, :1].repeat_interleave(self.temporal_factor, dim=2), mask[:, :, 1:]], dim=2)
        mask = mask.view(1, -1, self.temporal_factor, latent_h, latent_w).transpose(1, 2)  # [1, 4, F', h, w]
        state.condition = torch.cat([mask, condition], dim=1)  # [1, 4 + z, F', h, w]
