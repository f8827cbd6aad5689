"""Refusing at submission a request that no worker's GPU could hold.

Workers declare the GPU memory they plan within (their status records); the engine's planner
(`spec.memory`, torch-free) estimates what the request needs under its best placement
(offload, VAE tiling). If every live worker serving the model would refuse it, the client hears
why now, with a 422, instead of a failed job later. With no declaration to go on (no worker up
yet, CPU workers, a model without a known footprint) the request is accepted.
"""

from __future__ import annotations

from collections.abc import Callable

from jobs.errors import InvalidParameter
from jobs.validation import JobParams
from jobs.workers import WorkerStatus
from spec.memory import GIB, MemoryBudgetError, RequestShape, plan_memory
from spec.registry import get_spec


def check_fits_a_worker(
    params: JobParams, workers: Callable[[], list[WorkerStatus]], *, heartbeat_timeout_s: float
) -> None:
    """`workers` is called (a Redis scan) only for models whose footprint the planner knows."""
    footprint = get_spec(params.model).footprint  # params are resolved: the model is registered
    if footprint is None:
        return
    budgets = [
        w.vram_budget_bytes
        for w in workers()
        if params.model in w.served_models and not w.is_lost(timeout_s=heartbeat_timeout_s)
    ]
    if not budgets or any(b is None for b in budgets):
        return  # nothing declared, or a worker without a limit
    shape = RequestShape(params.width, params.height, params.num_frames, cfg=params.guidance_scale > 1)
    largest = max(b for b in budgets if b is not None)
    try:
        plan_memory(footprint, shape, largest)
    except MemoryBudgetError as exc:
        raise InvalidParameter(
            f"{params.model} at {params.width}x{params.height}, {params.num_frames} frames does not fit the GPU "
            f"memory of any worker serving it (largest: {largest / GIB:.1f} GiB): {exc}",
            param="size",
            code="insufficient_gpu_memory",
        ) from None
