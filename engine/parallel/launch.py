"""Running one function on N processes, one per GPU (or per CPU slot with gloo).

Started by `vidq generate --num-gpus N` (torch.multiprocessing spawn), or under torchrun (the
RANK/WORLD_SIZE/MASTER_* variables are honoured as they are). Every collective has a timeout, so a
rank that dies makes the others fail with a clear error instead of hanging.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

RankFunction = Callable[..., Any]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def rank_device(rank: int) -> torch.device:
    """One GPU per rank; on a CPU-only machine every rank computes on the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")


def _entry(
    rank: int, fn: RankFunction, world_size: int, port: int, backend: str, timeout_s: float, args: tuple
) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    if torch.cuda.is_available():
        torch.cuda.set_device(rank_device(rank))
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def launch(fn: RankFunction, world_size: int, *args: Any, backend: str | None = None, timeout_s: float = 600) -> None:
    """Run `fn(rank, *args)` on `world_size` ranks and wait for all of them.

    Under torchrun this process is one rank already: it joins the group and runs `fn` once.
    A failure on any rank is raised here (torch.multiprocessing.ProcessRaisedException or
    ProcessExitedException).
    """
    backend = backend or default_backend()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank = int(os.environ["RANK"])
        if torch.cuda.is_available():
            torch.cuda.set_device(rank_device(int(os.environ.get("LOCAL_RANK", rank))))
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        try:
            fn(rank, *args)
        finally:
            dist.destroy_process_group()
        return
    port = _free_port()
    mp.spawn(_entry, args=(fn, world_size, port, backend, timeout_s, args), nprocs=world_size, join=True)
