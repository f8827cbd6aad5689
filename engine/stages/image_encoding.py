"""Input image -> CLIP image tokens (Wan2.1 I2V), exactly as WanImageToVideoPipeline computes them,
with an LRU cache keyed by the image's pixels (like the prompt embeddings' cache)."""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import torch

from engine.cache import LRUCache
from engine.stages.base import Stage
from engine.stages.state import PipelineState
from spec.stages import Stage as StageName

ImageKey = tuple[str, str]


def image_digest(image: Any) -> str:
    """A stable key for a PIL image: mode, size and the SHA-256 of its pixels."""
    return hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()


class ImageEncodingStage(Stage):
    """The image processor (resize, centre crop, normalise) and the CLIP vision tower; the
    penultimate layer's hidden states are the image tokens [1, 257, 1280] (ViT-H/14 at 224 px).

    Runs only for models with an image encoder and requests with an image. The tokens are kept
    in `output_dtype` (the DiT's) and cached by (model id, image digest).
    """

    name: ClassVar[str] = StageName.IMAGE_ENCODING
    provides: ClassVar[tuple[str, ...]] = ("image_embeds",)
    announced: ClassVar[bool] = False

    def __init__(
        self,
        device: torch.device,
        image_processor: Any,
        image_encoder: torch.nn.Module,
        model_id: str,
        output_dtype: torch.dtype,
        cache: LRUCache[ImageKey, torch.Tensor],
    ) -> None:
        super().__init__(device)
        self.image_processor = image_processor
        self.image_encoder = image_encoder
        self.model_id = model_id
        self.output_dtype = output_dtype
        self.cache = cache

    def enabled(self, state: PipelineState) -> bool:
        return state.request.image is not None

    def forward(self, state: PipelineState) -> None:
        key: ImageKey = (self.model_id, image_digest(state.request.image))
        cached = self.cache.get(key)
        if cached is None:
            cached = self.encode(state.request.image)
            self.cache.put(key, cached)
        state.image_embeds = cached

    def encode(self, image: Any) -> torch.Tensor:
        """PIL image -> [1, L_img, image_dim] on the stage's device in `output_dtype`."""
        encoder_device = next(self.image_encoder.parameters()).device
        pixels = self.image_processor(images=image, return_tensors="pt").to(encoder_device)
        hidden = self.image_encoder(**pixels, output_hidden_states=True).hidden_states[-2]
        return hidden.to(self.device, self.output_dtype)
