"""Splitting the token sequence once after patch embedding, gathering it once before the final
projection: everything in between (norms, FFN, cross-attention) is per token and stays local."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from engine.parallel.attention import SequenceShard
from engine.parallel.state import ParallelState


def _pad_and_slice(t: torch.Tensor, padded_len: int, local_len: int, index: int) -> torch.Tensor:
    """Pad dim 1 with zeros to `padded_len` and keep slice `index` of length `local_len`."""
    pad = padded_len - t.shape[1]
    if pad:
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
    return t[:, index * local_len : (index + 1) * local_len]


def shard_sequence(
    x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], state: ParallelState
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], SequenceShard]:
    """x [B, S, C], rope cos/sin [1, S, 1, D] -> this rank's [B, S_local, C] and matching RoPE rows."""
    degree = state.config.sequence_degree
    valid_len = x.shape[1]
    local_len = -(-valid_len // degree)  # ceil: the last shard is padded
    padded = local_len * degree
    index = state.sequence_rank
    x_local = _pad_and_slice(x, padded, local_len, index)
    rope_local = (
        _pad_and_slice(rope[0], padded, local_len, index),
        _pad_and_slice(rope[1], padded, local_len, index),
    )
    return x_local, rope_local, SequenceShard(state=state, valid_len=valid_len, local_len=local_len)


def shard_like(t: torch.Tensor, shard: SequenceShard) -> torch.Tensor:
    """A per-token tensor [B, S, ...] sliced (and padded) the way `shard_sequence` sliced x."""
    degree = shard.state.config.sequence_degree
    return _pad_and_slice(t, shard.local_len * degree, shard.local_len, shard.state.sequence_rank)


def gather_sequence(x_local: torch.Tensor, shard: SequenceShard) -> torch.Tensor:
    """[B, S_local, C] on every rank of the branch -> the full [B, S, C] (padding dropped)."""
    degree = shard.state.config.sequence_degree
    parts = [torch.empty_like(x_local) for _ in range(degree)]
    dist.all_gather(parts, x_local.contiguous(), group=shard.state.sequence_group)
    return torch.cat(parts, dim=1)[:, : shard.valid_len]
