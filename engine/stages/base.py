"""The stage contract: declared inputs and outputs, checked and timed by the base class."""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch

from engine.stages.state import PipelineState


class StageContractError(RuntimeError):
    """A stage ran without an input it declares, or finished without an output it promises.

    Always a wiring bug in a pipeline, never a user error.
    """


class Stage(ABC):
    """One step of a pipeline. Subclasses set the class attributes and write only `forward`.

    `__call__` checks `requires`, announces the stage through `state.on_stage` (when
    `announced`), times `forward` (synchronising CUDA first, so the time is the stage's own and
    not a queue's), records the stage's peak CUDA memory, and checks `provides`.

    `around` holds context-manager factories entered around `forward`, inside the timing and the
    peak-memory window (how component offload puts a model on the GPU for one stage only).
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()
    # Only the stages callers track (`spec.stages.PROGRESS_SPAN`, less uploading) announce.
    announced: ClassVar[bool] = True

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.around: list[Callable[[], contextlib.AbstractContextManager[object]]] = []

    def enabled(self, state: PipelineState) -> bool:
        """Whether this stage runs for `state` (for example, encoding only when a path is given)."""
        return True

    @abstractmethod
    def forward(self, state: PipelineState) -> None:
        """Read the `requires` fields of `state` and set its `provides` fields."""

    def __call__(self, state: PipelineState) -> None:
        missing = [name for name in self.requires if getattr(state, name) is None]
        if missing:
            raise StageContractError(f"stage {self.name!r} is missing inputs {missing}")
        if self.announced and state.on_stage is not None:
            state.on_stage(self.name)

        on_cuda = self.device.type == "cuda"
        if on_cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        with contextlib.ExitStack() as stack:
            for context in self.around:
                stack.enter_context(context())
            self.forward(state)
        if on_cuda:
            torch.cuda.synchronize(self.device)
            state.stage_peak_memory_bytes[self.name] = torch.cuda.max_memory_allocated(self.device)
        state.stage_timings_s[self.name] = time.perf_counter() - start

        unset = [name for name in self.provides if getattr(state, name) is None]
        if unset:
            raise StageContractError(f"stage {self.name!r} did not set {unset}")
