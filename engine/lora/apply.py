"""Putting adapters on a loaded DiT and taking them off exactly, without reloading anything.

Two ways, same result (the tests hold both to diffusers' `set_adapters` output):

- **fused**: each changed weight becomes `round(W + sum_i scale_i * delta_i)`, computed in float32
  on the compute device. The first time a parameter is changed its original is copied aside and
  kept (on the GPU while `device_backup_bytes` allows, the memory the engine's plan leaves free;
  else in pinned host memory), so taking adapters off is a copy back: bit-exact, and no delta is
  recomputed. Costs nothing per step; switching costs a copy of the changed weights.
- **runtime**: the low-rank factors of the block linears go into the fixed-rank slots of
  `engine.lora.runtime` (everything else an adapter changes, biases and norms and the few
  non-block linears, is small and is fused as above). Switching writes the slots; each step
  pays the low-rank GEMMs.

Weights that an offload group holds live in its host buffer, which is what the GPU copy is made
from before every use: `host_view` points the edits there, so both ways work under layer-wise
and model offload.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from engine.lora.adapter import Adapter
from engine.lora.runtime import LoraLinear

MODES = ("fused", "runtime")


def _no_host_view(tensor: torch.Tensor) -> torch.Tensor | None:
    return None


@dataclass(frozen=True)
class LinearTarget:
    """Where the weight of an (unfused) linear lives: `module` rows `group` of `groups`."""

    module: nn.Linear
    group: int
    groups: int

    @property
    def rows(self) -> slice:
        size = self.module.out_features // self.groups
        return slice(self.group * size, (self.group + 1) * size)


def index_linears(model: nn.Module) -> dict[str, LinearTarget]:
    """Unfused module name (diffusers') -> where its weight is, fused projections included."""
    targets: dict[str, LinearTarget] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        prefix, _, leaf = name.rpartition(".")
        if leaf == "to_qkv":
            for group, proj in enumerate(("to_q", "to_k", "to_v")):
                targets[f"{prefix}.{proj}"] = LinearTarget(module, group, 3)
        elif leaf == "to_kv":
            for group, proj in enumerate(("to_k", "to_v")):
                targets[f"{prefix}.{proj}"] = LinearTarget(module, group, 2)
        else:
            targets[name] = LinearTarget(module, 0, 1)
    return targets


class LoraApplier:
    """Keeps one set of (adapter, scale) pairs applied to `model`; `apply` switches sets.

    Applying the set already applied does nothing (the warm case). `clear` restores the base
    model bit for bit. Not thread-safe: the engine calls it under its generation lock.
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        *,
        host_view: Callable[[torch.Tensor], torch.Tensor | None] = _no_host_view,
        device_backup_bytes: int = 0,
    ) -> None:
        self.model = model
        self.device = device
        self.host_view = host_view
        self.linears = index_linears(model)
        self.slots = [module for module in model.modules() if isinstance(module, LoraLinear)]
        self.slot_rank = self.slots[0].lora_rank if self.slots else 0
        self._pin = torch.cuda.is_available()
        self.device_backup_bytes = device_backup_bytes  # originals kept on the GPU up to this much
        self._device_backup_used = 0
        self._backups: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(param) -> (param, original)
        self._changed: set[int] = set()
        self.active: tuple[tuple[str, float], ...] = ()
        self.mode: str | None = None

    def fits_runtime(self, loras: Sequence[tuple[Adapter, float]]) -> bool:
        """Whether the slots can hold these adapters side by side."""
        return bool(self.slots) and sum(adapter.rank for adapter, _ in loras) <= self.slot_rank

    def apply(self, loras: Sequence[tuple[Adapter, float]], mode: str) -> str | None:
        """Make exactly `loras` active (scale 0 = absent); returns the mode used, None for none.

        `mode` "runtime" falls back to "fused" when the slots cannot hold the adapters. On any
        error the model is restored to the base weights before the exception propagates.
        """
        if mode not in MODES:
            raise ValueError(f"LoRA mode must be one of {MODES}, got {mode!r}")
        loras = [(adapter, float(scale)) for adapter, scale in loras if scale != 0.0]
        signature = tuple((adapter.key, scale) for adapter, scale in loras)
        if signature == self.active:
            return self.mode
        self.clear()
        if not loras:
            return None
        if mode == "runtime" and not self.fits_runtime(loras):
            mode = "fused"
        try:
            with torch.no_grad():
                if mode == "runtime":
                    fused_rest = self._fill_slots(loras)
                    self._merge(fused_rest)
                else:
                    self._merge(loras)
        except BaseException:
            self.clear()
            raise
        self.active, self.mode = signature, mode
        return mode

    def clear(self) -> None:
        """Back to the base model: originals copied back, slots switched off."""
        with torch.no_grad():
            for param_id in self._changed:
                param, original = self._backups[param_id]
                self._storage(param).copy_(original)
        self._changed.clear()
        for slot in self.slots:
            slot.lora_active = False
        self.active, self.mode = (), None

    # -- internals --------------------------------------------------------------------------

    def _storage(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor that holds `tensor`'s values between uses: its offload host copy, or itself."""
        view = self.host_view(tensor)
        return view if view is not None else tensor.data

    def _backup(self, param: torch.Tensor, storage: torch.Tensor) -> None:
        if id(param) in self._backups:
            return
        nbytes = storage.numel() * storage.element_size()
        if storage.device.type != "cpu" and self._device_backup_used + nbytes <= self.device_backup_bytes:
            original = storage.clone()  # a copy back is then a device-to-device copy
            self._device_backup_used += nbytes
        else:
            original = torch.empty(storage.shape, dtype=storage.dtype, pin_memory=self._pin)
            original.copy_(storage)
        self._backups[id(param)] = (param, original)

    def _locate(self, name: str) -> tuple[torch.Tensor, slice | None]:
        """Parameter `name` (unfused naming) -> (the parameter, its rows or None for all)."""
        module_name, _, leaf = name.rpartition(".")
        target = self.linears.get(module_name)
        if target is not None and leaf in ("weight", "bias"):
            return getattr(target.module, leaf), target.rows if target.groups > 1 else None
        return self.model.get_parameter(name), None

    def _merge(self, loras: Sequence[tuple[Adapter, float]]) -> None:
        """Fuse every update of `loras` into the weights, one parameter at a time (bounded memory)."""
        updates: dict[int, tuple[torch.Tensor, list[tuple[slice | None, Callable[[], torch.Tensor]]]]] = {}

        def add(param: torch.Tensor, rows: slice | None, make: Callable[[], torch.Tensor]) -> None:
            updates.setdefault(id(param), (param, []))[1].append((rows, make))

        for adapter, scale in loras:
            for module_name, factors in adapter.low_rank.items():
                target = self.linears[module_name]
                factor = scale * factors.alpha_scale

                def low_rank(factors=factors, factor=factor) -> torch.Tensor:  # type: ignore[no-untyped-def]
                    up = factors.up.to(self.device, torch.float32)  # [out, r]
                    down = factors.down.to(self.device, torch.float32)  # [r, in]
                    return (up @ down) * factor  # [out, in]

                add(target.module.weight, target.rows if target.groups > 1 else None, low_rank)
            for name, delta in adapter.deltas.items():
                param, rows = self._locate(name)

                def full(delta=delta, scale=scale) -> torch.Tensor:  # type: ignore[no-untyped-def]
                    return delta.to(self.device, torch.float32) * scale

                add(param, rows, full)

        for param_id, (param, parts) in updates.items():
            storage = self._storage(param)
            self._backup(param, storage)
            work = storage.to(self.device, torch.float32, copy=True)
            for rows, make in parts:
                region = work if rows is None else work[rows]
                region += make().reshape(region.shape)
            storage.copy_(work.to(storage.dtype))
            self._changed.add(param_id)

    def _fill_slots(self, loras: Sequence[tuple[Adapter, float]]) -> list[tuple[Adapter, float]]:
        """Write the block linears' factors into the slots, side by side along the rank; return
        the rest of each adapter (what the slots do not cover) for fusing."""
        slot_of = {id(slot): slot for slot in self.slots}
        offsets: dict[tuple[int, int], int] = {}
        for slot in self.slots:
            self._storage(slot.lora_down).zero_()
            self._storage(slot.lora_up).zero_()
        rest = []
        for adapter, scale in loras:
            leftover = {}
            for module_name, factors in adapter.low_rank.items():
                target = self.linears[module_name]
                slot = slot_of.get(id(target.module))
                if slot is None:
                    leftover[module_name] = factors
                    continue
                rank, start = factors.rank, offsets.get((id(slot), target.group), 0)
                offsets[(id(slot), target.group)] = start + rank
                first = target.group * slot.lora_rank + start
                down = self._storage(slot.lora_down)  # [G*R, in]
                up = self._storage(slot.lora_up)  # [G, out/G, R]
                down[first : first + rank].copy_(factors.down.to(down.dtype))
                scaled = factors.up.to(self.device, torch.float32) * (scale * factors.alpha_scale)
                up[target.group, :, start : start + rank].copy_(scaled.to(up.dtype))
            rest.append((Adapter(adapter.key, adapter.format, leftover, adapter.deltas), scale))
        for slot in self.slots:  # all or none: one compiled variant for "LoRA on"
            slot.lora_active = True
        return rest
