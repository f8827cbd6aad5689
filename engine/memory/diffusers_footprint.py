"""The `ModelFootprint` of a diffusers-format checkpoint of the backend's families (headers only).

Weights are counted from the safetensors headers of each component; the transformer's repeated
blocks are the tensors under `<list>.<index>.` (all block lists together: HunyuanVideo has dual-
and single-stream blocks, counted as one list of average-sized blocks). Activations use the planner's
per-token coefficients with the transformer's width (heads x head dim) and a 4x feed-forward.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from spec.memory import ModelFootprint

BLOCK_KEY = re.compile(r"^(transformer_blocks|single_transformer_blocks|blocks)\.(\d+)\.")
FFN_MULTIPLE = 4


def _tensor_sizes(folder: Path) -> dict[str, int]:
    """Element count of every tensor in the folder's safetensors files."""
    sizes: dict[str, int] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                count = 1
                for size in handle.get_slice(name).get_shape():
                    count *= size
                sizes[name] = count
    return sizes


def vae_factors(vae_config: dict[str, Any]) -> tuple[int, int]:
    """(temporal, spatial) compression of a diffusers video VAE config, as its pipeline computes them."""
    name = vae_config.get("_class_name", "")
    if name == "AutoencoderKLLTXVideo":
        scaling = vae_config.get("spatio_temporal_scaling", (True, True, True, False))
        doublings = sum(bool(s) for s in scaling)
        return int(vae_config.get("patch_size_t", 1)) * 2**doublings, int(
            vae_config.get("patch_size", 4)
        ) * 2**doublings
    if name == "AutoencoderKLMochi":
        return 6, 8
    if name == "AutoencoderKLHunyuanVideo":
        return int(vae_config.get("temporal_compression_ratio", 4)), int(vae_config.get("spatial_compression_ratio", 8))
    spatial = 2 ** (len(vae_config.get("block_out_channels", (0, 0, 0, 0))) - 1)
    return int(vae_config.get("temporal_compression_ratio", 4)), spatial


def footprint_from_sizes(
    transformer_sizes: dict[str, int],
    transformer_config: dict[str, Any],
    vae_numel: int,
    vae_config: dict[str, Any],
    text_encoder_numel: int,
    dtype_bytes: int,
) -> ModelFootprint:
    """The footprint from element counts: the transformer's per tensor name, the others in total."""
    blocks: set[tuple[str, ...]] = set()
    block_numel = 0
    for name, count in transformer_sizes.items():
        match = BLOCK_KEY.match(name)
        if match:
            blocks.add(match.groups())
            block_numel += count
    other_numel = sum(transformer_sizes.values()) - block_numel
    num_blocks = max(len(blocks), 1)
    dim = int(transformer_config["num_attention_heads"]) * int(transformer_config["attention_head_dim"])
    patch = int(transformer_config.get("patch_size") or 1)
    temporal, spatial = vae_factors(vae_config)
    decoder_channels = vae_config.get("decoder_block_out_channels") or vae_config.get("block_out_channels") or (128,)
    return ModelFootprint(
        dit_block_bytes=-(-block_numel // num_blocks) * dtype_bytes,
        dit_num_blocks=num_blocks,
        dit_other_bytes=other_numel * dtype_bytes,
        dit_dim=dim,
        dit_ffn_dim=FFN_MULTIPLE * dim,
        text_encoder_bytes=text_encoder_numel * dtype_bytes,
        vae_bytes=vae_numel * dtype_bytes,
        patch_size=(int(transformer_config.get("patch_size_t") or 1), patch, patch),
        vae_temporal_factor=temporal,
        vae_spatial_factor=spatial,
        vae_decoder_channels=int(decoder_channels[0]),
    )


def diffusers_footprint_from_folder(folder: Path, dtype: torch.dtype) -> ModelFootprint:
    """The footprint of the checkpoint in `folder`, every component run in `dtype`."""
    return footprint_from_sizes(
        _tensor_sizes(folder / "transformer"),
        json.loads((folder / "transformer" / "config.json").read_text()),
        sum(_tensor_sizes(folder / "vae").values()),
        json.loads((folder / "vae" / "config.json").read_text()),
        sum(sum(_tensor_sizes(path).values()) for path in sorted(folder.glob("text_encoder*"))),
        torch.empty((), dtype=dtype).element_size(),
    )


def diffusers_footprint_from_modules(
    transformer: torch.nn.Module, vae: torch.nn.Module, text_encoders: list[torch.nn.Module], dtype: torch.dtype
) -> ModelFootprint:
    """The same from instantiated modules (meta-device ones are enough: only shapes are read)."""

    def numel(module: torch.nn.Module) -> int:
        return sum(t.numel() for t in module.state_dict().values())

    return footprint_from_sizes(
        {name: t.numel() for name, t in transformer.state_dict().items()},
        dict(transformer.config),
        numel(vae),
        {**vae.config, "_class_name": type(vae).__name__},
        sum(numel(m) for m in text_encoders),
        torch.empty((), dtype=dtype).element_size(),
    )
