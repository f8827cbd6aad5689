"""Random LoRA files for a Wan DiT, written in each key format (tests, benchmarks, demos).

No hub is reachable from CI or the GPU machine, so every format the loader accepts is exercised
on adapters the project makes itself, with the keys the real files use.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from spec.lora_keys import DiTShape

FORMATS = ("diffusers", "wan", "wan_ab", "kohya", "distill")

# Our module names -> original Wan names (the inverse of `keys._WAN_RENAMES` for what we write).
_TO_WAN: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^blocks\.(\d+)\.attn1\.to_(q|k|v)$", r"blocks.\1.self_attn.\2"),
        (r"^blocks\.(\d+)\.attn1\.to_out\.0$", r"blocks.\1.self_attn.o"),
        (r"^blocks\.(\d+)\.attn2\.to_(q|k|v)$", r"blocks.\1.cross_attn.\2"),
        (r"^blocks\.(\d+)\.attn2\.to_out\.0$", r"blocks.\1.cross_attn.o"),
        (r"^blocks\.(\d+)\.ffn\.net\.0\.proj$", r"blocks.\1.ffn.0"),
        (r"^blocks\.(\d+)\.ffn\.net\.2$", r"blocks.\1.ffn.2"),
        (r"^condition_embedder\.time_proj$", "time_projection.1"),
        (r"^proj_out$", "head.head"),
    )
)


def wan_name(module: str) -> str:
    for pattern, replacement in _TO_WAN:
        if pattern.match(module):
            return pattern.sub(replacement, module)
    raise ValueError(f"no original Wan name for {module!r}")


def block_linears(dit: DiTShape) -> list[str]:
    return [name for name in dit.linear_shapes() if name.startswith("blocks.")]


def random_adapter(
    dit: DiTShape,
    rank: int,
    fmt: str = "diffusers",
    *,
    seed: int = 0,
    std: float = 0.05,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """A LoRA state dict on every block linear of `dit`, in format `fmt` (one of `FORMATS`).

    "wan" uses lora_down/lora_up with an alpha of rank/2; "wan_ab" uses lora_A/lora_B and no
    alpha; "kohya" is musubi-tuner's flattened names with alpha; "distill" is laid out like the
    LightX2V/CausVid step-distillation adapters: "wan" factors plus `diff_b` bias deltas, the
    time projection, and zero norm / modulation `diff`s.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = std) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * scale).to(dtype)

    shapes = dit.linear_shapes()
    modules = block_linears(dit)
    if fmt in ("diffusers", "distill"):
        modules += ["condition_embedder.time_proj"]
    out: dict[str, torch.Tensor] = {}
    for module in modules:
        out_features, in_features = shapes[module]
        down, up = randn(rank, in_features, scale=in_features**-0.5), randn(out_features, rank)
        if fmt == "diffusers":
            out[f"transformer.{module}.lora_A.weight"] = down
            out[f"transformer.{module}.lora_B.weight"] = up
            continue
        original = wan_name(module)
        if fmt == "kohya":
            flat = "lora_unet_" + original.replace(".", "_")
            out[f"{flat}.lora_down.weight"], out[f"{flat}.lora_up.weight"] = down, up
            out[f"{flat}.alpha"] = torch.tensor(float(rank) / 2)
            continue
        a, b = ("lora_A", "lora_B") if fmt == "wan_ab" else ("lora_down", "lora_up")
        out[f"diffusion_model.{original}.{a}.weight"] = down
        out[f"diffusion_model.{original}.{b}.weight"] = up
        if fmt == "wan" or (fmt == "distill" and module.startswith("blocks.")):
            out[f"diffusion_model.{original}.alpha"] = torch.tensor(float(rank) / 2)
        if fmt == "distill":
            out[f"diffusion_model.{original}.diff_b"] = randn(out_features)
    if fmt == "distill":
        for i in range(dit.num_layers):
            out[f"diffusion_model.blocks.{i}.norm3.diff"] = torch.zeros(dit.dim, dtype=dtype)
            out[f"diffusion_model.blocks.{i}.norm3.diff_b"] = torch.zeros(dit.dim, dtype=dtype)
            out[f"diffusion_model.blocks.{i}.self_attn.norm_q.diff"] = torch.zeros(dit.dim, dtype=dtype)
            out[f"diffusion_model.blocks.{i}.modulation.diff"] = torch.zeros(1, 6, dit.dim, dtype=dtype)
    return out


def write_adapter(path: str | Path, tensors: dict[str, torch.Tensor]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path
