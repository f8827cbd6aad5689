"""One entry point for attention, with a known fallback order.

Backends (the value of `EngineSettings.attention_backend`):

- ``"sdpa"``: `torch.nn.functional.scaled_dot_product_attention` with torch's own kernel choice.
  Works everywhere (CPU included) and is the reference the others are compared against.
- ``"cudnn"``: SDPA restricted to, in priority order, cuDNN -> flash -> memory-efficient. cuDNN's
  fused attention is the fastest on Hopper (637 vs 361 TFLOP/s for flash at the Wan2.1-1.3B shape,
  see shared/anchors); the others stay enabled so a shape cuDNN refuses still runs.
- ``"flash"``: SDPA restricted to flash -> memory-efficient.
- ``"flash_attn"``: the `flash-attn` package (fp16/bf16 on CUDA only).
- ``"sage"``: the `sageattention` package (INT8 Q/K; lossy, ~1e-2 relative error). Never chosen by
  "auto": on Hopper it measured slower than cuDNN (431 vs 637 TFLOP/s, shared/anchors); selectable
  for GPUs where it wins.
- ``"auto"``: resolved once per model by `resolve_backend`: on CUDA with compute capability >= 9
  (Hopper) cuDNN; on other CUDA GPUs flash; then the flash-attn package if installed; otherwise
  plain SDPA. CPU always resolves to plain SDPA.

Sequence-parallel attention (Ulysses/ring) will be another backend here, so the model never
changes when it is added.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import cache

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from spec.settings import ATTENTION_BACKENDS

BACKENDS = ATTENTION_BACKENDS

_SDPA_PRIORITIES: dict[str, list[SDPBackend]] = {
    "cudnn": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
    "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
}


@cache
def _flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


@cache
def _sage_installed() -> bool:
    return importlib.util.find_spec("sageattention") is not None


def resolve_backend(name: str, device: torch.device | str) -> str:
    """Turn a requested backend (possibly "auto") into the concrete one to use on `device`.

    An explicit GPU-only backend on a CPU device is rejected here, before any work starts.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if device.type != "cuda":
        if name not in ("auto", "sdpa"):
            raise ValueError(f"attention backend {name!r} needs a CUDA device, got {device}")
        return "sdpa"
    if name == "flash_attn" and not _flash_attn_installed():
        raise ValueError("attention backend 'flash_attn' needs the flash-attn package")
    if name == "sage" and not _sage_installed():
        raise ValueError("attention backend 'sage' needs the sageattention package")
    if name != "auto":
        return name
    major, _minor = torch.cuda.get_device_capability(device)
    if major >= 9:
        return "cudnn"
    if major >= 8:
        return "flash"
    return "flash_attn" if _flash_attn_installed() else "sdpa"


def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    # [B, S, H, D] -> [B, H, S, D] for SDPA, and back.
    out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
    return out.transpose(1, 2)


def _sdpa_with(priorities: list[SDPBackend]) -> Callable[..., torch.Tensor]:
    def run(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(priorities, set_priority=True):
            return _sdpa(query, key, value)

    return run


def _flash_attn(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    from flash_attn import flash_attn_func  # the only place the package is imported

    return flash_attn_func(query, key, value)  # takes and returns [B, S, H, D]


def _sage(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    from sageattention import sageattn  # the only place the package is imported

    return sageattn(query, key, value, tensor_layout="NHD", is_causal=False)  # [B, S, H, D] in and out


_KERNELS: dict[str, Callable[..., torch.Tensor]] = {
    "sdpa": _sdpa,
    "cudnn": _sdpa_with(_SDPA_PRIORITIES["cudnn"]),
    "flash": _sdpa_with(_SDPA_PRIORITIES["flash"]),
    "flash_attn": _flash_attn,
    "sage": _sage,
}


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """Non-causal, unmasked multi-head attention.

    query [B, Sq, H, D], key/value [B, Skv, H, D] -> [B, Sq, H, D]. `backend` is a concrete name
    from `resolve_backend` (not "auto").
    """
    return _KERNELS[backend](query, key, value)
