"""Warm engines, one per model, kept across jobs: loading weights costs far more than a job's setup."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from jobs.settings import Settings
from spec.errors import CodedError
from spec.registry import get_spec
from spec.routing import queue_for

if TYPE_CHECKING:
    from engine import Engine
    from engine.parallel.group import EngineGroup

log = logging.getLogger(__name__)


def served_models(settings: Settings) -> list[str]:
    """What this worker serves: ``VIDQ_WORKER_MODELS`` if set, else every installed model
    (`engine.models.locate.installed_models`: every complete checkpoint, plus outside production the
    built-in random model; in production it is served only when ``VIDQ_WORKER_MODELS`` names it).

    A worker of ``VIDQ_WORKER_GPUS`` > 1 is one rank group, and a process holds one group (one
    torch.distributed world): it serves exactly one model a job may span its GPUs of — the one
    named, or by default ``VIDQ_DEFAULT_MODEL`` when it can, else the first such installed model.
    """
    if settings.worker_model_names:
        if settings.worker_gpus > 1 and len(settings.worker_model_names) > 1:
            raise ValueError(
                f"a worker of {settings.worker_gpus} GPUs runs one rank group and serves one model: "
                "set VIDQ_WORKER_MODELS to a single name (start one group per model)"
            )
        return settings.worker_model_names
    from engine.models.locate import installed_models  # the Hugging Face cache lookup needs the engine

    installed = installed_models(settings.resolved_models_dir, builtin=settings.environment != "production")
    if settings.worker_gpus == 1:
        return installed
    spannable = [name for name in installed if get_spec(name).max_gpus >= settings.worker_gpus]
    if not spannable:
        return []
    chosen = settings.default_model if settings.default_model in spannable else spannable[0]
    log.info(
        "a rank group of %d GPUs serves one model: %s (set VIDQ_WORKER_MODELS to choose)", settings.worker_gpus, chosen
    )
    return [chosen]


def queues_for_models(models: list[str], gpus: int = 1) -> list[str]:
    """The family queues of `models`; a worker of N GPUs also takes the jobs that ask for N."""
    sizes = {1, gpus}
    return sorted({queue_for(get_spec(m), n) for m in models for n in sizes})


class ModelUnavailable(CodedError, LookupError):
    """A job for a model this worker does not serve (same queue family, not installed here)."""

    code = "model_unavailable"
    param = "model"


def _build(model: str, settings: Settings) -> Engine | EngineGroup:
    """One engine, or with `VIDQ_WORKER_GPUS` > 1 a group of ranks (this process is rank 0)."""
    if settings.worker_gpus == 1:
        from engine import Engine  # torch is imported only by processes that render

        return Engine(model, settings)
    from engine.parallel import ParallelConfig
    from engine.parallel.group import EngineGroup

    config = ParallelConfig.from_options(
        num_gpus=settings.worker_gpus,
        ulysses_degree=settings.worker_ulysses_degree,
        ring_degree=settings.worker_ring_degree,
        cfg_parallel=settings.worker_cfg_parallel,
    )
    return EngineGroup(model, config, timeout_s=settings.collective_timeout_s, settings=settings)


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
        """The GPU memory this worker declares: the budget its engines plan within
        (`VIDQ_VRAM_BUDGET_GB`), else what its loaded engines measured (for a rank group, one
        GPU's); None when unbounded (CPU)."""
        if self.settings.vram_budget_gb is not None:
            return int(self.settings.vram_budget_gb * 2**30)
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
