"""Loading the parts of a diffusers-format Wan folder onto one device."""

from __future__ import annotations

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
    """Everything a Wan text-to-video pipeline runs, loaded and in eval mode."""

    transformer: WanTransformer3DModel
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: Any
    scheduler_config: dict[str, Any]


def check_folder(folder: Path) -> None:
    """Raise `CheckpointError` unless `folder` has model_index.json and every component folder."""
    missing = [name for name in ("model_index.json", *SUBFOLDERS) if not (folder / name).exists()]
    if missing:
        raise CheckpointError(f"{folder} is not a diffusers Wan checkpoint: missing {', '.join(missing)}")


def load_wan_components(folder: Path, device: torch.device, dtype: torch.dtype) -> WanComponents:
    """Load each component from `folder`: the DiT and text encoder in `dtype`, the VAE in float32.

    The DiT is ours (`engine.models.wan_transformer`); the VAE, text encoder, tokenizer and
    scheduler come from diffusers/transformers, since they are a small share of the run time.
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
    return WanComponents(
        transformer=transformer,
        vae=vae.to(device).eval().requires_grad_(False),
        text_encoder=text_encoder.to(device).eval().requires_grad_(False),
        tokenizer=tokenizer,
        scheduler_config=scheduler_config,
    )
