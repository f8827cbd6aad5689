"""Which queue a job goes to.

One Celery queue per model family and GPU group size: a worker receives only models whose family it
has loaded, and a job that asks for N GPUs only reaches workers that run each job across N GPUs.
"""

from __future__ import annotations

from spec.registry import ModelSpec

# The sizes a job's `num_gpus` (and a worker's `VIDQ_WORKER_GPUS`, for queue purposes) may take.
GPU_GROUP_SIZES = (1, 2, 4, 8)


def queue_for(spec: ModelSpec, num_gpus: int = 1) -> str:
    """`gpu.<family>` for one GPU, `gpu.<family>.x<N>` for a job run across N GPUs."""
    return f"gpu.{spec.family}" if num_gpus == 1 else f"gpu.{spec.family}.x{num_gpus}"
