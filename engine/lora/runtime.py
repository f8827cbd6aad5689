"""Runtime LoRA: fixed-rank slots beside each block linear, filled per job, never resized.

A slot is a pair of buffers of the linear (`lora_down` [G*R, in], `lora_up` [G, out/G, R], G =
1, or 3 / 2 for the fused q|k|v and k|v GEMMs, R = the slot rank). Adapters are written into
them (several side by side along R, the rest zeros), so their shapes never change: a compiled
block sees the same graph inputs for every adapter and compiles once for "LoRA on" and once for
"LoRA off" (`lora_active`, a Python flag every slot of the model shares), never per adapter.
Slots are buffers of their block, so layer-wise offload carries them with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LoraLinear(nn.Linear):
    """nn.Linear plus a low-rank update `up @ (down @ x)` when `lora_active`.

    Takes over the base layer's own `weight`/`bias` Parameters, so parameter names, the
    checkpoint layout and offload groups are unchanged. The slot buffers are not persistent (they
    are no part of a checkpoint).
    """

    def __init__(self, base: nn.Linear, rank: int, groups: int) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        if self.out_features % groups:
            raise ValueError(f"{self.out_features} outputs do not split into {groups} groups")
        self.lora_rank = rank
        self.lora_groups = groups
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.register_buffer("lora_down", torch.zeros(groups * rank, self.in_features, **factory), persistent=False)
        self.register_buffer(
            "lora_up", torch.zeros(groups, self.out_features // groups, rank, **factory), persistent=False
        )
        self.lora_active = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)  # [..., out]
        if not self.lora_active:
            return out
        hidden = F.linear(x, self.lora_down)  # [..., G*R]
        if self.lora_groups == 1:
            return out + F.linear(hidden, self.lora_up[0])
        hidden = hidden.unflatten(-1, (self.lora_groups, self.lora_rank))  # [..., G, R]
        update = torch.einsum("...gr,gor->...go", hidden, self.lora_up)  # [..., G, out/G]
        return out + update.flatten(-2)


def _block_linears(block: nn.Module) -> list[tuple[nn.Module, str, int]]:
    """(parent, attribute, groups) of every linear of a Wan block, fused projections included."""
    found: list[tuple[nn.Module, str, int]] = []
    for attn in (block.attn1, block.attn2):
        if getattr(attn, "to_qkv", None) is not None:
            found.append((attn, "to_qkv", 3))
        else:
            found.append((attn, "to_q", 1))
            if getattr(attn, "to_kv", None) is not None:
                found.append((attn, "to_kv", 2))
            else:
                found += [(attn, "to_k", 1), (attn, "to_v", 1)]
        found.append((attn.to_out, "0", 1))
    found += [(block.ffn.net[0], "proj", 1), (block.ffn.net, "2", 1)]
    return found


def install_runtime_slots(model: nn.Module, rank: int) -> list[LoraLinear]:
    """Give every block linear of `model` a LoRA slot of `rank`; call after fusing projections
    and before offload or compilation (both must see the final modules)."""
    slots = []
    for block in model.blocks:
        for parent, name, groups in _block_linears(block):
            base = parent[int(name)] if name.isdigit() else getattr(parent, name)
            if isinstance(base, LoraLinear):
                slots.append(base)
                continue
            slot = LoraLinear(base, rank, groups)
            if name.isdigit():
                parent[int(name)] = slot
            else:
                setattr(parent, name, slot)
            slots.append(slot)
    return slots
