"""Warm engines, one per model, kept across jobs: loading weights costs far more than a job's setup."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from engine.registry import get_spec, list_specs
from jobs.settings import Settings

if TYPE_CHECKING:
    from engine import Engine
    from engine.parallel.group import EngineGroup

log = logging.getLogger(__name__)

BUILTIN_MODELS = ("tiny-wan",)  # written on first use, so every install serves it


def installed_models(settings: Settings) -> list[str]:
    """Registry models whose complete checkpoint is in the models folder or the Hugging Face cache,
    plus (outside production) the built-in random model."""
    from engine.models.locate import installed_folder

    models_dir = settings.resolved_models_dir
    found = [s.name for s in list_specs() if s.name not in BUILTIN_MODELS and installed_folder(s, models_dir)]
    if settings.environment == "production":
        return sorted(found)  # the random-weight models only when VIDQ_WORKER_MODELS names them
    return sorted(set(found) | set(BUILTIN_MODELS))


def served_models(settings: Settings) -> list[str]:
    """What this worker serves: ``VIDQ_WORKER_MODELS`` if set, else every installed model."""
    return settings.worker_model_names or installed_models(settings)


def queues_for_models(models: list[str], gpus: int = 1) -> list[str]:
    """The family queues of `models`; a worker of N GPUs also takes the jobs that ask for N."""
    from jobs.validation import queue_for

    sizes = {1, gpus}
    return sorted({queue_for(get_spec(m), n) for m in models for n in sizes})


class ModelUnavailable(LookupError):
    """A job for a model this worker does not serve (same queue family, not installed here)."""


def _build(model: str, settings: Settings) -> Engine | EngineGroup:
    """One engine, or with `VIDQ_WORKER_GPUS` > 1 a group of ranks (this process is rank 0)."""
    kwargs = {"models_dir": settings.resolved_models_dir, "attention_backend": settings.attention_backend}
    if settings.worker_gpus == 1:
        from engine import Engine  # torch is imported only by processes that render

        return Engine(model, device=settings.device or None, **kwargs)
    from engine.parallel import ParallelConfig
    from engine.parallel.group import EngineGroup

    config = ParallelConfig.from_options(
        num_gpus=settings.worker_gpus,
        ulysses_degree=settings.worker_ulysses_degree,
        ring_degree=settings.worker_ring_degree,
        cfg_parallel=settings.worker_cfg_parallel,
    )
    return EngineGroup(model, config, timeout_s=settings.collective_timeout_s, **kwargs)


class EnginePool:
    def __init__(self, settings: Settings, served: list[str] | None = None) -> None:
        self.settings = settings
        self.served = served if served is not None else served_models(settings)
        self._engines: dict[str, Engine | EngineGroup] = {}
        self._lock = threading.Lock()

    def get(self, model: str) -> Engine | EngineGroup:
        if model not in self.served:
            raise ModelUnavailable(f"model {model!r} is not installed on this worker (serves {', '.join(self.served)})")
        with self._lock:
            engine = self._engines.get(model)
            if engine is not None and not getattr(engine, "healthy", True):
                log.warning("the rank group of %s broke in the last job; restarting it", model)
                engine.close()  # type: ignore[union-attr]
                engine = None
            if engine is None:
                log.info("loading model %s", model)
                engine = _build(model, self.settings)
                self._engines[model] = engine
            return engine

    def vram_budget_bytes(self) -> int | None:
        """The GPU memory this worker declares: `VIDQ_WORKER_VRAM_GB`, else what its loaded engines
        planned within (for a rank group, one GPU's); None when unbounded (CPU)."""
        if self.settings.worker_vram_gb is not None:
            return int(self.settings.worker_vram_gb * 2**30)
        budgets = []
        for engine in self._engines.values():
            single = getattr(engine, "engine", engine)  # an EngineGroup's rank-0 engine
            if getattr(single, "memory_budget_bytes", None) is not None:
                budgets.append(single.memory_budget_bytes)
        return max(budgets) if budgets else None

    def warm_adapters(self) -> list[str]:
        """Adapter ids some loaded engine holds in memory (published for the dispatcher)."""
        warm: set[str] = set()
        for engine in list(self._engines.values()):
            single = getattr(engine, "engine", engine)  # an EngineGroup's rank-0 engine
            warm.update(getattr(single, "warm_adapters", ()))
        return sorted(warm)

    @property
    def loaded(self) -> list[str]:
        return sorted(self._engines)
