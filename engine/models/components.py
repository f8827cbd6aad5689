"""Loading the parts of a diffusers-format Wan folder onto one device.

One loader for every Wan variant: what a folder holds beyond text-to-video is read from its
model_index.json and component folders, as diffusers' pipelines do: `transformer_2/` and
`boundary_ratio` (Wan2.2 A14B), `expand_timesteps` (Wan2.2 TI2V), `image_encoder/` and
`image_processor/` (Wan2.1 I2V's CLIP).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.libraries import libraries_follow_the_process
from engine.models.wan_transformer import WanTransformer3DModel

SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


class CheckpointError(ValueError):
    """A model folder that is not a usable diffusers-format Wan checkpoint."""


@dataclass
class WanComponents:
    """Everything a Wan pipeline runs, loaded and in eval mode.

    `transformer_2` (the low-noise expert) is set with `boundary_ratio`; `image_encoder` (a
    transformers CLIPVisionModel) with `image_processor`. `expand_timesteps` marks Wan2.2 TI2V.
    """

    transformer: WanTransformer3DModel
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: Any
    scheduler_config: dict[str, Any]
    transformer_2: WanTransformer3DModel | None = None
    boundary_ratio: float | None = None
    expand_timesteps: bool = False
    image_encoder: torch.nn.Module | None = None
    image_processor: Any = None

    @property
    def transformers(self) -> list[WanTransformer3DModel]:
        """The experts in call order (one for most models)."""
        return [self.transformer] if self.transformer_2 is None else [self.transformer, self.transformer_2]

    @property
    def image_conditioned(self) -> bool:
        """True when the DiT takes a conditioning image (36 channels, or TI2V's first frame)."""
        return self.expand_timesteps or self.transformer.config.in_channels != self.transformer.config.out_channels


def check_folder(folder: Path) -> None:
    """Raise `CheckpointError` unless `folder` has model_index.json and every component folder."""
    missing = [name for name in ("model_index.json", *SUBFOLDERS) if not (folder / name).exists()]
    if missing:
        raise CheckpointError(f"{folder} is not a diffusers Wan checkpoint: missing {', '.join(missing)}")


def read_model_index(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "model_index.json").read_text())


def has_component(index: dict[str, Any], name: str) -> bool:
    """model_index.json lists optional components as [null, null] when absent."""
    entry = index.get(name)
    return isinstance(entry, list) and entry[0] is not None


def load_wan_components(folder: Path, device: torch.device, dtype: torch.dtype) -> WanComponents:
    """Load each component from `folder`: the DiT(s) and text encoder in `dtype`, the VAE and the
    CLIP image encoder in float32.

    The DiT is ours (`engine.models.wan_transformer`); the VAE, text and image encoders,
    tokenizer, image processor and scheduler come from diffusers/transformers, since they are a
    small share of the run time.
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from transformers import AutoTokenizer, UMT5EncoderModel

    libraries_follow_the_process()
    check_folder(folder)
    transformer = WanTransformer3DModel.from_pretrained(folder / "transformer", dtype=dtype, device=device)
    # Casts follow the loads (rather than a dtype argument) because the argument's name differs
    # across the diffusers/transformers versions we support; they are no-ops when already right.
    vae = AutoencoderKLWan.from_pretrained(folder / "vae", torch_dtype=torch.float32)
    text_encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder", dtype=dtype).to(dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    scheduler_config = dict(UniPCMultistepScheduler.load_config(folder / "scheduler"))
    index = read_model_index(folder)
    transformer_2 = None
    if has_component(index, "transformer_2"):
        transformer_2 = WanTransformer3DModel.from_pretrained(folder / "transformer_2", dtype=dtype, device=device)
    image_encoder = image_processor = None
    if has_component(index, "image_encoder"):
        from transformers import CLIPImageProcessor, CLIPVisionModel

        # float32, as diffusers' Wan I2V examples load it: it runs once per image (then cached).
        image_encoder = CLIPVisionModel.from_pretrained(folder / "image_encoder", dtype=torch.float32)
        image_encoder = image_encoder.to(device).eval().requires_grad_(False)
        image_processor = CLIPImageProcessor.from_pretrained(folder / "image_processor")
    boundary_ratio = index.get("boundary_ratio")
    if (transformer_2 is None) != (boundary_ratio is None):
        raise CheckpointError(f"{folder}: transformer_2 and boundary_ratio come together")
    return WanComponents(
        transformer=transformer,
        vae=vae.to(device).eval().requires_grad_(False),
        text_encoder=text_encoder.to(device).eval().requires_grad_(False),
        tokenizer=tokenizer,
        scheduler_config=scheduler_config,
        transformer_2=transformer_2,
        boundary_ratio=boundary_ratio,
        expand_timesteps=bool(index.get("expand_timesteps", False)),
        image_encoder=image_encoder,
        image_processor=image_processor,
    )
