"""The engine's errors: each carries the `code` a failed job records (see `spec.errors`).

Torch's own exceptions are translated at the engine's edge (`coded_errors`), so callers map errors
by the code they carry, never by class names.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from spec.errors import CodedError


class EngineError(CodedError):
    """Base of the errors the engine raises while loading or generating."""

    code = "render_error"


class GpuOutOfMemory(EngineError, MemoryError):
    """The accelerator ran out of memory despite the plan (another process, fragmentation)."""

    code = "out_of_memory"


class RankFailure(EngineError, RuntimeError):
    """A rank of a multi-GPU group died or stopped answering during a generation."""

    code = "rank_failed"


@contextmanager
def coded_errors() -> Iterator[None]:
    """Re-raise torch's out-of-memory error as `GpuOutOfMemory` (the original is its `__cause__`).

    Torch is imported only when an error passes (it is loaded by then), so this module stays
    importable without it (`engine.models.locate` and the CLI use its errors)."""
    try:
        yield
    except Exception as exc:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            raise GpuOutOfMemory(str(exc)) from exc
        raise
