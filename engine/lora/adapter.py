"""A LoRA file turned into the tensors the engine applies: factors per module, deltas per parameter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from spec.lora_keys import LoraLayout, parse_layout


@dataclass(frozen=True)
class LowRank:
    """`weight += scale * alpha_scale * up @ down` (`alpha_scale` is the file's alpha / rank)."""

    down: torch.Tensor  # [rank, in]
    up: torch.Tensor  # [out, rank]
    alpha_scale: float = 1.0

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass(frozen=True)
class Adapter:
    """One converted LoRA, on the CPU in the file's dtype (converted per use, on the device).

    `low_rank` maps module names (ours = diffusers') to factors; `deltas` maps parameter names
    to full deltas (`diff`, `diff_b`), shaped like the parameter.
    """

    key: str
    format: str
    low_rank: dict[str, LowRank]
    deltas: dict[str, torch.Tensor]

    @property
    def rank(self) -> int:
        return max((factors.rank for factors in self.low_rank.values()), default=0)

    @property
    def nbytes(self) -> int:
        tensors = [t for f in self.low_rank.values() for t in (f.down, f.up)] + list(self.deltas.values())
        return sum(t.numel() * t.element_size() for t in tensors)


def adapter_from_tensors(key: str, tensors: Mapping[str, torch.Tensor], layout: LoraLayout | None = None) -> Adapter:
    """Convert a LoRA state dict of any supported format (see `spec.lora_keys`)."""
    layout = layout or parse_layout(tensors)
    low_rank = {}
    for module, keys in layout.low_rank.items():
        down, up = tensors[keys.down], tensors[keys.up]
        alpha_scale = 1.0
        if keys.alpha is not None:
            alpha_scale = float(tensors[keys.alpha].float().reshape(-1)[0]) / down.shape[0]
        low_rank[module] = LowRank(down.contiguous(), up.contiguous(), alpha_scale)
    deltas = {name: tensors[file_key].contiguous() for name, file_key in layout.deltas.items()}
    return Adapter(key, layout.format, low_rank, deltas)


def load_adapter(key: str, path: str | Path) -> Adapter:
    """Read and convert a LoRA .safetensors file."""
    return adapter_from_tensors(key, load_file(str(path), device="cpu"))
