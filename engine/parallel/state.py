"""Process groups of the cfg x ring x ulysses mesh, built once per process."""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from engine.parallel.config import ParallelConfig


@dataclass
class ParallelState:
    """This rank's place in the mesh and the groups it talks to.

    Global rank = cfg_rank * (R * U) + ring_rank * U + ulysses_rank, so the Ulysses group of a rank
    holds consecutive sequence shards: after its all-to-all, each rank holds the contiguous
    block of tokens that the ring passes around.
    """

    config: ParallelConfig
    rank: int
    cfg_rank: int
    ring_rank: int
    ulysses_rank: int
    cfg_group: dist.ProcessGroup | None  # the ranks with the same sequence shard, one per branch
    sequence_group: dist.ProcessGroup | None  # ring x ulysses ranks of this branch
    ring_group: dist.ProcessGroup | None
    ulysses_group: dist.ProcessGroup | None
    ring_ranks: list[int]  # global ranks of this ring, in ring order

    @property
    def sequence_rank(self) -> int:
        return self.ring_rank * self.config.ulysses_degree + self.ulysses_rank


_STATE: ParallelState | None = None


def get_parallel_state() -> ParallelState | None:
    return _STATE


def initialize_parallel_state(config: ParallelConfig) -> ParallelState:
    """Create every group (all ranks must call this, in the same order) and remember them."""
    global _STATE
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed must be initialised before the parallel state")
    if dist.get_world_size() != config.world_size:
        raise ValueError(f"world size is {dist.get_world_size()}, the config says {config.world_size}")
    u, r, c = config.ulysses_degree, config.ring_degree, config.cfg_degree
    rank = dist.get_rank()
    cfg_rank, rest = divmod(rank, r * u)
    ring_rank, ulysses_rank = divmod(rest, u)

    def mesh_rank(ci: int, ri: int, ui: int) -> int:
        return ci * r * u + ri * u + ui

    groups: dict[str, dist.ProcessGroup | None] = {}
    ring_ranks: list[int] = []
    # dist.new_group is collective: every rank creates every group, keeps its own.
    for ci in range(c):
        for ui in range(u):
            members = [mesh_rank(ci, ri, ui) for ri in range(r)]
            group = dist.new_group(members)
            if rank in members:
                groups["ring"], ring_ranks = group, members
        for ri in range(r):
            members = [mesh_rank(ci, ri, ui) for ui in range(u)]
            group = dist.new_group(members)
            if rank in members:
                groups["ulysses"] = group
        members = [mesh_rank(ci, ri, ui) for ri in range(r) for ui in range(u)]
        group = dist.new_group(members)
        if rank in members:
            groups["sequence"] = group
    for ri in range(r):
        for ui in range(u):
            members = [mesh_rank(ci, ri, ui) for ci in range(c)]
            group = dist.new_group(members)
            if rank in members:
                groups["cfg"] = group
    _STATE = ParallelState(
        config=config,
        rank=rank,
        cfg_rank=cfg_rank,
        ring_rank=ring_rank,
        ulysses_rank=ulysses_rank,
        cfg_group=groups["cfg"],
        sequence_group=groups["sequence"],
        ring_group=groups["ring"],
        ulysses_group=groups["ulysses"],
        ring_ranks=ring_ranks,
    )
    return _STATE


def reset_parallel_state() -> None:
    global _STATE
    _STATE = None
