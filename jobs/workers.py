"""Where workers report themselves: a status record per worker, rewritten every heartbeat.

A worker publishes its host, GPUs, loaded models, current job and step itself (``worker/status.py``).
With Redis each record is a key with a TTL of ``RECORD_TTL_FACTOR`` heartbeat timeouts: a worker
whose heartbeats stop is shown as *lost* once its last heartbeat is older than
``VIDQ_HEARTBEAT_TIMEOUT_S``, and disappears when the key expires. Embedded mode keeps the records
in this process (the API and the worker share it).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from jobs.broker import redis_client
from jobs.settings import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = "vidq:worker:"
RECORD_TTL_FACTOR = 30  # a lost worker stays listed for 30 heartbeat timeouts (30 min by default)


@dataclass
class WorkerStatus:
    """One worker as it last described itself. ``heartbeat_at`` is Unix seconds."""

    worker_id: str
    host: str
    pid: int
    heartbeat_at: float
    started_at: float
    queues: list[str] = field(default_factory=list)
    served_models: list[str] = field(default_factory=list)
    loaded_models: list[str] = field(default_factory=list)
    gpus: list[dict[str, Any]] = field(default_factory=list)  # [] = CPU only
    # The GPU memory this worker plans renders within (None: unbounded, e.g. a CPU worker).
    vram_budget_bytes: int | None = None
    current_job: str | None = None
    stage: str | None = None
    step: int = 0
    total_steps: int = 0
    jobs_done: int = 0
    # Since when it consumes its queues and runs nothing (Unix seconds); None while busy or starting up.
    # While it is idle a waiting message is taken at once: the sweeper uses it to tell a lost message.
    idle_since: float | None = None
    # LoRA adapter ids held in memory: the dispatcher sends a job with these adapters here when idle.
    warm_loras: list[str] = field(default_factory=list)

    def is_lost(self, *, timeout_s: float, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) - self.heartbeat_at > timeout_s

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerStatus:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class WorkerRegistry(Protocol):
    def publish(self, status: WorkerStatus) -> None: ...

    def list(self) -> list[WorkerStatus]: ...


class RedisWorkerRegistry:
    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s

    def publish(self, status: WorkerStatus) -> None:
        self.client.set(KEY_PREFIX + status.worker_id, json.dumps(status.__dict__), ex=self.ttl_s)

    def list(self) -> list[WorkerStatus]:
        keys = sorted(self.client.scan_iter(match=KEY_PREFIX + "*", count=500))
        if not keys:
            return []
        records = []
        for raw in self.client.mget(keys):
            if raw is not None:
                records.append(WorkerStatus.from_dict(json.loads(raw)))
        return sorted(records, key=lambda w: w.worker_id)


class MemoryWorkerRegistry:
    def __init__(self, ttl_s: int) -> None:
        self.ttl_s = ttl_s
        self._records: dict[str, WorkerStatus] = {}
        self._lock = threading.Lock()

    def publish(self, status: WorkerStatus) -> None:
        with self._lock:
            self._records[status.worker_id] = status

    def list(self) -> list[WorkerStatus]:
        now = time.time()
        with self._lock:
            return sorted(
                (w for w in self._records.values() if now - w.heartbeat_at < self.ttl_s), key=lambda w: w.worker_id
            )


_embedded_registry: MemoryWorkerRegistry | None = None


def make_worker_registry(settings: Settings) -> WorkerRegistry:
    ttl_s = int(settings.heartbeat_timeout_s * RECORD_TTL_FACTOR)
    if settings.redis_url:
        return RedisWorkerRegistry(redis_client(settings.redis_url), ttl_s=ttl_s)
    global _embedded_registry
    if _embedded_registry is None:  # one per process: the embedded API and worker share it
        _embedded_registry = MemoryWorkerRegistry(ttl_s=ttl_s)
    return _embedded_registry
