"""A failed job records the code its error carries, whatever the error's class is called."""

from __future__ import annotations

import pytest
import torch

from engine.errors import GpuOutOfMemory, RankFailure, coded_errors
from spec.memory import MemoryBudgetError
from spec.registry import SpecViolationError
from worker.engines import ModelUnavailable
from worker.render import error_code_for


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (MemoryBudgetError("does not fit"), "insufficient_gpu_memory"),
        (SpecViolationError("size", "bad size"), "invalid_request"),
        (ModelUnavailable("not here"), "model_unavailable"),
        (RankFailure("rank 1 died"), "rank_failed"),
        (MemoryError(), "out_of_memory"),
        (RuntimeError("anything else"), "render_error"),
        (ValueError("an unexpected bug"), "render_error"),
    ],
)
def test_failed_job_code_is_the_errors_own(error: BaseException, code: str) -> None:
    assert error_code_for(error) == code


def test_torch_out_of_memory_leaves_the_engine_with_its_code() -> None:
    with pytest.raises(GpuOutOfMemory) as raised, coded_errors():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert error_code_for(raised.value) == "out_of_memory"
    assert isinstance(raised.value.__cause__, torch.OutOfMemoryError)
