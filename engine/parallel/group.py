"""A long-lived group of engine ranks, for a worker that runs every job across several GPUs.

This process is rank 0: it holds the warm engine of rank 0, reports progress and returns the
result. Ranks 1..N-1 are child processes, each with its own warm engine on its own GPU, that wait
for requests on a pipe (not on a collective, so an idle group never times out) and then run the
same generation in lockstep through torch.distributed.

A rank that dies or hangs makes the collectives of the others fail within the group's timeout
(gloo notices a closed peer at once), so the job fails with `RankFailure` instead of hanging; the
group is then broken and its owner builds a new one (`EngineGroup.healthy` tells).
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.errors import RankFailure
from engine.parallel.config import ParallelConfig
from engine.parallel.launch import _free_port, default_backend, rank_device
from engine.stages.state import OnStage, OnStep
from spec.request import GenerationRequest, GenerationResult

_STOP = "stop"


def _init_group(rank: int, world_size: int, port: int, backend: str, timeout_s: float) -> None:
    if torch.cuda.is_available():
        torch.cuda.set_device(rank_device(rank))
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )


def _follower(
    rank: int,
    world_size: int,
    port: int,
    backend: str,
    timeout_s: float,
    model: str,
    config: ParallelConfig,
    engine_kwargs: dict[str, Any],
    conn: multiprocessing.connection.Connection,
) -> None:
    from engine.engine import Engine

    _init_group(rank, world_size, port, backend, timeout_s)
    engine = Engine(model, device=rank_device(rank), parallel=config, **engine_kwargs)
    conn.send("ready")
    while True:
        message = conn.recv()
        if message == _STOP:
            break
        engine.generate(message)
    dist.destroy_process_group()


class EngineGroup:
    """`world_size` engine ranks (this process is rank 0) that generate together."""

    def __init__(
        self,
        model: str,
        config: ParallelConfig,
        *,
        timeout_s: float = 600.0,
        backend: str | None = None,
        **engine_kwargs: Any,
    ) -> None:
        from engine.engine import Engine

        self.config = config
        self.healthy = True
        backend = backend or default_backend()
        port = _free_port()
        context = mp.get_context("spawn")  # CUDA does not survive fork
        self._pipes: list[multiprocessing.connection.Connection] = []
        self._processes: list[mp.Process] = []
        for rank in range(1, config.world_size):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_follower,
                args=(rank, config.world_size, port, backend, timeout_s, model, config, engine_kwargs, child_end),
                daemon=True,
                name=f"vidq-rank-{rank}",
            )
            process.start()
            self._pipes.append(parent_end)
            self._processes.append(process)
        _init_group(0, config.world_size, port, backend, timeout_s)
        self.engine = Engine(model, device=rank_device(0), parallel=config, **engine_kwargs)
        for pipe in self._pipes:
            if pipe.recv() != "ready":
                raise RankFailure("a rank did not start")

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes if process.pid is not None]

    def generate(
        self, request: GenerationRequest, on_step: OnStep | None = None, on_stage: OnStage | None = None, **kwargs: Any
    ) -> GenerationResult:
        """Run `request` on every rank; progress and the result come from rank 0.

        Any exception (a dead rank, or a cancel raised by `on_step`) leaves the other ranks out of
        step, so the group is marked unhealthy and must be closed and rebuilt.
        """
        if not self.healthy:
            raise RankFailure("this engine group is broken; build a new one")
        dead = [p.name for p in self._processes if not p.is_alive()]
        if dead:
            self.healthy = False
            raise RankFailure(f"ranks died before the job started: {', '.join(dead)}")
        try:
            for pipe in self._pipes:
                pipe.send(request)
            return self.engine.generate(request, on_step=on_step, on_stage=on_stage, **kwargs)
        except Exception as exc:
            self.healthy = False
            for process in self._processes:
                process.join(timeout=1)  # a rank that just crashed needs a moment to be seen dead
            dead = [p.name for p in self._processes if not p.is_alive()]
            if dead:
                raise RankFailure(f"{', '.join(dead)} died during the generation: {exc}") from exc
            if isinstance(exc, dist.DistBackendError):
                raise RankFailure(f"a rank stopped answering (collective timeout): {exc}") from exc
            raise

    def close(self) -> None:
        """Stop the ranks and leave the process group (idempotent)."""
        for pipe, process in zip(self._pipes, self._processes, strict=True):
            if process.is_alive() and self.healthy:
                with contextlib.suppress(BrokenPipeError, OSError):  # it may die as we speak
                    pipe.send(_STOP)
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=10)
        self._processes.clear()
        self._pipes.clear()
        if dist.is_initialized():
            dist.destroy_process_group()
        from engine.parallel.state import reset_parallel_state

        reset_parallel_state()
