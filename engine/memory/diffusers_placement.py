"""Carrying out a `MemoryPlan` on a diffusers pipeline's components.

- `none`: every component on the GPU.
- `model`: each component in host memory and on the GPU only for its stage (vidq's
  `ComponentOffload`, as on the native path): text encoders around text encoding, the transformer
  around denoising, the VAE around decoding (and around denoising too when the checkpoint takes an
  image, which the pipeline VAE-encodes inside its call).
- `layerwise`: as `model` for the text encoders and the VAE; the transformer under diffusers' group
  offloading, one block per group, the next group copied on a CUDA stream while the current one
  computes (`use_stream`; synchronous copies on the CPU, where the tests run it).
- text encoder `cpu`: the text encoders stay on the CPU and their embeddings move to the GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from engine.memory.offload import ComponentOffload
from spec.memory import MemoryPlan

ContextFactory = Callable[[], contextlib.AbstractContextManager[object]]
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def text_encoders(pipe: Any) -> list[torch.nn.Module]:
    return [m for m in (getattr(pipe, name, None) for name in TEXT_ENCODERS) if m is not None]


def place_pipeline(
    pipe: Any, plan: MemoryPlan, device: torch.device, *, vae_in_denoising: bool
) -> dict[str, list[ContextFactory]]:
    """Put `pipe`'s components where `plan` says (they are loaded on the CPU); returns, per stage
    name, the context factories that bring offloaded components onto `device` for that stage."""
    around: dict[str, list[ContextFactory]] = {"text_encoding": [], "denoising": [], "decoding": []}
    for encoder in text_encoders(pipe):
        if plan.text_encoder == "resident":
            encoder.to(device)
        elif plan.text_encoder == "offload":
            around["text_encoding"].append(ComponentOffload(encoder, device).on_device)
    transformer = pipe.transformer
    if plan.offload == "none":
        transformer.to(device)
    elif plan.offload == "model":
        around["denoising"].append(ComponentOffload(transformer, device).on_device)
    else:
        transformer.enable_group_offload(
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=device.type == "cuda",
        )
    if plan.vae == "resident":
        pipe.vae.to(device)
    else:
        vae = ComponentOffload(pipe.vae, device)
        around["decoding"].append(vae.on_device)
        if vae_in_denoising:
            around["denoising"].append(vae.on_device)
    return around
