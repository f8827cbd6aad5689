"""The worker's own status: what it is doing now (``WorkerActivity``, updated by the render) and a
thread that publishes it with the host's GPU stats every heartbeat interval (``StatusPublisher``)."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from jobs.workers import WorkerRegistry, WorkerStatus
from worker.gpus import read_gpus

log = logging.getLogger(__name__)


@dataclass
class WorkerActivity:
    """The current job and step; written by the render thread, read by the status thread."""

    job_id: str | None = None
    stage: str | None = None
    step: int = 0
    total_steps: int = 0
    jobs_done: int = 0
    # Since when the worker takes messages and runs nothing (Unix seconds); None while busy or starting.
    idle_since: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def begin(self, job_id: str) -> None:
        with self._lock:
            self.job_id, self.stage, self.step, self.total_steps = job_id, None, 0, 0
            self.idle_since = None

    def ready(self) -> None:
        """The consumer is up and takes messages: idle from now until the first job."""
        with self._lock:
            if self.job_id is None and self.idle_since is None:
                self.idle_since = time.time()

    def update(self, *, stage: str, step: int, total_steps: int) -> None:
        with self._lock:
            self.stage, self.step, self.total_steps = stage, step, total_steps

    def end(self) -> None:
        with self._lock:
            self.job_id, self.stage, self.step, self.total_steps = None, None, 0, 0
            self.idle_since = time.time()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "current_job": self.job_id,
                "stage": self.stage,
                "step": self.step,
                "total_steps": self.total_steps,
                "jobs_done": self.jobs_done,
                "idle_since": self.idle_since,
            }


def _torch_cuda() -> list[dict[str, Any]]:
    # Only a process that already touched CUDA is asked: the status thread must never be the one
    # that initialises CUDA (or imports torch into a webhook-only worker).
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        gpus.append(
            {
                "index": index,
                "name": torch.cuda.get_device_name(index),
                "memory_used_mb": round((total - free) / 2**20, 1),
                "memory_total_mb": round(total / 2**20, 1),
                "utilization_pct": None,
            }
        )
    return gpus


def gpu_stats() -> list[dict[str, Any]]:
    """The GPUs this worker may use (NVML, by UUID, following CUDA_VISIBLE_DEVICES; else torch.cuda
    in a process that already uses CUDA); [] on a CPU host."""
    readings = read_gpus()
    if readings:
        return [gpu.as_status() for gpu in readings]
    return _torch_cuda()


class StatusPublisher:
    """Publishes the worker's status now and then every ``interval_s`` on a daemon thread."""

    def __init__(
        self,
        *,
        registry: WorkerRegistry,
        worker_id: str,
        activity: WorkerActivity,
        queues: list[str],
        served_models: list[str],
        loaded_models: Any,  # a callable returning the loaded model names
        interval_s: float,
        vram_budget_bytes: int | None = None,
        warm_loras: Any = None,  # a callable returning the adapter ids held in memory
    ) -> None:
        self.warm_loras = warm_loras or list
        self.vram_budget_bytes = vram_budget_bytes
        self.registry = registry
        self.worker_id = worker_id
        self.activity = activity
        self.queues = queues
        self.served_models = served_models
        self.loaded_models = loaded_models
        self.interval_s = interval_s
        self.started_at = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vidq-worker-status", daemon=True)
        self._gpus_checked_at = 0.0
        self._gpus: list[dict[str, Any]] = []

    def status(self) -> WorkerStatus:
        now = time.time()
        if now - self._gpus_checked_at >= max(self.interval_s, 5.0):  # NVML reads cost a few ms
            self._gpus, self._gpus_checked_at = gpu_stats(), now
        return WorkerStatus(
            worker_id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            heartbeat_at=now,
            started_at=self.started_at,
            queues=self.queues,
            served_models=self.served_models,
            loaded_models=list(self.loaded_models()),
            gpus=self._gpus,
            vram_budget_bytes=self.vram_budget_bytes,
            warm_loras=list(self.warm_loras()),
            **self.activity.snapshot(),
        )

    def publish_once(self) -> None:
        try:
            self.registry.publish(self.status())
        except Exception as exc:  # Redis may be restarting; the next beat tries again
            log.warning("could not publish worker status: %s", exc)

    def start(self) -> StatusPublisher:
        self.publish_once()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.publish_once()
