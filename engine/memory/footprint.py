"""A checkpoint folder's `ModelFootprint`, read from configs and safetensors headers (no weights)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from engine.models.wan_transformer import WanTransformer3DModel, WanTransformerConfig
from spec.memory import ModelFootprint

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1, "I8": 1, "BOOL": 1}


def _numel_in_folder(folder: Path) -> int:
    """Total number of elements over every safetensors file in `folder` (headers only)."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                shape = handle.get_slice(name).get_shape()
                count = 1
                for size in shape:
                    count *= size
                total += count
    return total


def transformer_footprint(config: WanTransformerConfig, dtype: torch.dtype) -> tuple[int, int]:
    """(bytes of one block, bytes of the rest) of the DiT in `dtype`, counted on the meta device."""
    with torch.device("meta"):
        model = WanTransformer3DModel(config)
    block = sum(
        p.numel() * torch.empty((), dtype=model.param_dtype(f"blocks.0.{name}", dtype)).element_size()
        for name, p in model.blocks[0].named_parameters()
    )
    other = sum(
        p.numel() * torch.empty((), dtype=model.param_dtype(name, dtype)).element_size()
        for name, p in model.named_parameters()
        if not name.startswith("blocks.")
    )
    other += sum(b.numel() * b.element_size() for b in model.buffers())
    return block, other


def footprint_from_folder(folder: Path, dtype: torch.dtype) -> ModelFootprint:
    """The footprint of the diffusers-format Wan folder `folder` run in `dtype` (VAE and CLIP image
    encoder in float32); a `transformer_2/` listed in model_index.json counts as a second expert."""
    config = WanTransformerConfig.from_dict(json.loads((folder / "transformer" / "config.json").read_text()))
    block, other = transformer_footprint(config, dtype)
    dtype_bytes = torch.empty((), dtype=dtype).element_size()
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    index = json.loads((folder / "model_index.json").read_text())
    experts = 2 if (folder / "transformer_2").is_dir() and (index.get("transformer_2") or [None])[0] else 1
    image_encoder = folder / "image_encoder"
    image_encoder_bytes = _numel_in_folder(image_encoder) * 4 if image_encoder.is_dir() else 0
    return ModelFootprint(
        dit_block_bytes=block,
        dit_num_blocks=config.num_layers,
        dit_other_bytes=other,
        dit_dim=config.inner_dim,
        dit_ffn_dim=config.ffn_dim,
        text_encoder_bytes=_numel_in_folder(folder / "text_encoder") * dtype_bytes,
        vae_bytes=_numel_in_folder(folder / "vae") * 4,
        patch_size=config.patch_size,
        vae_temporal_factor=int(vae_config.get("scale_factor_temporal", 4)),
        vae_spatial_factor=int(vae_config.get("scale_factor_spatial", 8)),
        # The Wan2.2 VAE decodes at half resolution into 2x2 patches: per output pixel, a quarter.
        vae_decoder_channels=int(vae_config.get("decoder_base_dim") or vae_config.get("base_dim", 96))
        // int(vae_config.get("patch_size") or 1) ** 2,
        dit_experts=experts,
        image_encoder_bytes=image_encoder_bytes,
    )
