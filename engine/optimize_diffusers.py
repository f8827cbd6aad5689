"""Speed-ups for the diffusers backend, through diffusers' and torch's own mechanisms.

- Attention: the kernel the engine's `attention_backend` resolved to. cuDNN and flash are SDPA
  kernels: the denoising loop runs under `sdpa_kernel` with that priority (cuDNN -> flash ->
  memory-efficient), which reaches every family, whether its attention goes through diffusers'
  dispatcher (LTX, HunyuanVideo: the dispatcher's "native" backend is SDPA) or calls SDPA itself
  (CogVideoX, Mochi); a shape cuDNN refuses still runs on the next kernel. The kernel packages
  (flash-attn, SageAttention) are set with diffusers' `set_attention_backend` on the families
  whose attention goes through the dispatcher; the others refuse them before loading finishes.
- Fused projections: q|k|v as one GEMM (k|v in cross-attention) through the model's own
  `fuse_qkv_projections`, for the families that ask for it (CogVideoX), under the engine's
  `VIDQ_FUSE_PROJECTIONS` setting; done before placement, since offload moves the weights it reads.
- Regional compilation: each repeated transformer block is compiled on its own (diffusers'
  `compile_repeated_blocks` does the same for the classes a model lists in `_repeated_blocks`;
  CogVideoX and Mochi list none, so the family names them). All blocks of a class share one
  graph per input shape, so compiling costs one block's worth of time per shape, and the compiled
  code stays with the loaded pipeline for every later job of the worker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from engine.pipelines.diffusers_families import DiffusersFamily

# engine attention backend -> diffusers dispatcher backend, for the kernel packages.
DISPATCHER_BACKENDS = {"flash_attn": "flash", "sage": "sage"}
SDPA_PRIORITIES: dict[str, list[SDPBackend]] = {
    "cudnn": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
    "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
}


def set_attention(transformer: torch.nn.Module, family: DiffusersFamily, backend: str) -> Callable[[], object]:
    """Apply the resolved engine `backend` to `transformer`; returns the context factory to run the
    denoising loop in. Raises ValueError for a kernel package the family's attention cannot reach."""
    if backend in DISPATCHER_BACKENDS:
        if not family.attention_dispatch:
            raise ValueError(
                f"attention backend {backend!r} needs diffusers' attention dispatcher, which {family.name} "
                "does not use; choose auto, cudnn, flash or sdpa"
            )
        transformer.set_attention_backend(DISPATCHER_BACKENDS[backend])
        return contextlib.nullcontext
    priorities = SDPA_PRIORITIES.get(backend)
    if priorities is None:  # "sdpa": torch's own choice
        return contextlib.nullcontext
    return lambda: sdpa_kernel(priorities, set_priority=True)


def compile_repeated_blocks(
    transformer: torch.nn.Module, class_names: tuple[str, ...], *, emulate_precision_casts: bool = True
) -> int:
    """Compile, in place and lazily, every sub-module whose class is in the model's `_repeated_blocks`
    (diffusers' list: LTX, HunyuanVideo) or else in `class_names` (the family's); returns how many.

    `emulate_precision_casts` makes the fused kernels round to bf16 where eager mode does, which
    keeps the output nearest to plain diffusers' (the native engine does the same, see
    `engine.optimize`).
    """
    # Shapes vary per request (size, frames, CFG on/off); each gets its own specialised graph.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    # The model's own list where it declares one (what diffusers' `compile_repeated_blocks` uses).
    class_names = tuple(getattr(transformer, "_repeated_blocks", None) or class_names)
    compiled = 0
    for module in transformer.modules():
        if type(module).__name__ in class_names:
            module.compile(dynamic=False, options={"emulate_precision_casts": emulate_precision_casts})
            compiled += 1
    if not compiled:
        raise ValueError(f"{type(transformer).__name__} has no blocks of {class_names}")
    return compiled


def fuse_projections(transformer: torch.nn.Module, family: DiffusersFamily) -> bool:
    """Fuse the attention projections if the family asks for it; returns whether it did."""
    fuse = getattr(transformer, "fuse_qkv_projections", None)
    if not family.fuse_projections or fuse is None:
        return False
    fuse()
    return True
