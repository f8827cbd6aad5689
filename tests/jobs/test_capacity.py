"""Submission refuses a request that no live worker's declared GPU memory could hold."""

from __future__ import annotations

import time

import pytest

from jobs.capacity import check_fits_a_worker
from jobs.errors import InvalidParameter
from jobs.validation import JobRequest, resolve_job_params
from jobs.workers import WorkerStatus

GIB = 2**30
BIG_JOB = resolve_job_params(
    JobRequest(prompt="a city at night", model="wan2.1-t2v-14b", size="1280x720", num_frames=81)
)


def worker(
    budget_gib: float | None, *, models: tuple[str, ...] = ("wan2.1-t2v-14b",), age_s: float = 0
) -> WorkerStatus:
    now = time.time()
    return WorkerStatus(
        worker_id=f"w{budget_gib}",
        host="gpu-host",
        pid=1,
        heartbeat_at=now - age_s,
        started_at=now - 100,
        served_models=list(models),
        vram_budget_bytes=None if budget_gib is None else int(budget_gib * GIB),
    )


def test_a_request_no_worker_can_hold_is_refused_with_the_reason() -> None:
    with pytest.raises(InvalidParameter) as excinfo:
        check_fits_a_worker(BIG_JOB, lambda: [worker(2), worker(3)], heartbeat_timeout_s=60)
    error = excinfo.value
    assert error.code == "insufficient_gpu_memory" and error.param == "size"
    assert "1280x720" in error.message and "3.0 GiB" in error.message


def test_a_request_that_fits_the_largest_worker_is_accepted() -> None:
    check_fits_a_worker(BIG_JOB, lambda: [worker(2), worker(80)], heartbeat_timeout_s=60)


@pytest.mark.parametrize(
    "workers",
    [
        [],  # nothing declared yet: accept, the job waits for a worker
        [worker(None)],  # a worker without a limit
        [worker(2, models=("wan2.1-t2v-1.3b",))],  # no worker of this model has declared anything
        [worker(2, age_s=3600)],  # only a lost worker: its declaration no longer counts
    ],
)
def test_without_a_live_declaration_the_request_is_accepted(workers: list[WorkerStatus]) -> None:
    check_fits_a_worker(BIG_JOB, lambda: workers, heartbeat_timeout_s=60)


def test_models_without_a_known_footprint_are_not_checked() -> None:
    tiny = resolve_job_params(JobRequest(prompt="a cat", model="tiny-wan"))

    def never() -> list[WorkerStatus]:
        raise AssertionError("no worker lookup for a model the planner cannot size")

    check_fits_a_worker(tiny, never, heartbeat_timeout_s=60)


@pytest.mark.parametrize(
    ("model", "small_gib", "large_gib"),
    [("hunyuanvideo", 8, 80), ("mochi-1", 4, 48), ("ltx-video", 2, 24), ("cogvideox-5b", 3, 40)],
)
def test_diffusers_backed_models_are_planned_too(model: str, small_gib: float, large_gib: float) -> None:
    """The models served through diffusers have planner footprints, so a worker too small is refused."""
    params = resolve_job_params(JobRequest(prompt="a city at night", model=model))  # its default size and frames
    with pytest.raises(InvalidParameter) as excinfo:
        check_fits_a_worker(params, lambda: [worker(small_gib, models=(model,))], heartbeat_timeout_s=60)
    assert excinfo.value.code == "insufficient_gpu_memory"
    check_fits_a_worker(params, lambda: [worker(large_gib, models=(model,))], heartbeat_timeout_s=60)
