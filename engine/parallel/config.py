"""Parallel degrees, validated before any process group is built."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParallelConfig:
    """How `world_size` ranks share one generation.

    Ranks form a cfg x ring x ulysses mesh (cfg outermost): the two CFG branches run on different
    halves of the ranks; within a branch, the token sequence is split across ring x ulysses ranks.
    """

    world_size: int = 1
    ulysses_degree: int = 1
    ring_degree: int = 1
    cfg_degree: int = 1

    def __post_init__(self) -> None:
        for name in ("world_size", "ulysses_degree", "ring_degree", "cfg_degree"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.cfg_degree not in (1, 2):
            raise ValueError("cfg_degree is 1 or 2 (conditional and unconditional branches)")
        product = self.ulysses_degree * self.ring_degree * self.cfg_degree
        if product != self.world_size:
            raise ValueError(
                f"ulysses_degree x ring_degree x cfg_degree = {self.ulysses_degree} x {self.ring_degree} x "
                f"{self.cfg_degree} = {product} must equal the number of processes ({self.world_size})"
            )

    @property
    def sequence_degree(self) -> int:
        return self.ulysses_degree * self.ring_degree

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def check_heads(self, num_heads: int) -> None:
        """Ulysses gives each rank a slice of the heads: the count must divide evenly."""
        if num_heads % self.ulysses_degree:
            raise ValueError(
                f"ulysses_degree {self.ulysses_degree} must divide the model's {num_heads} attention heads"
            )

    @classmethod
    def from_options(
        cls, *, num_gpus: int, ulysses_degree: int | None, ring_degree: int | None, cfg_parallel: bool
    ) -> ParallelConfig:
        """Fill in the degree left unset so the mesh covers `num_gpus` (Ulysses by default)."""
        cfg = 2 if cfg_parallel else 1
        if num_gpus % cfg:
            raise ValueError(f"--cfg-parallel needs an even number of processes, got {num_gpus}")
        sequence = num_gpus // cfg
        if ulysses_degree is None and ring_degree is None:
            ulysses_degree, ring_degree = sequence, 1
        elif ulysses_degree is None:
            ulysses_degree = sequence // max(ring_degree or 1, 1)
        elif ring_degree is None:
            ring_degree = sequence // max(ulysses_degree, 1)
        return cls(world_size=num_gpus, ulysses_degree=ulysses_degree, ring_degree=ring_degree or 1, cfg_degree=cfg)
