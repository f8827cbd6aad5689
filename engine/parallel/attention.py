"""Sequence-parallel self-attention: Ulysses (all-to-all over heads), ring (K/V blocks passed
around with online-softmax merging) and both at once (USP on a 2-D mesh).

Every rank enters with its shard of the token sequence, q/k/v [B, S_local, H, D], and leaves with
the attention output for the same shard. The sequence may have been padded to divide evenly;
padded keys are cut off before each attention call (padding sits at the end of the sequence, so
each K/V block has a known number of valid rows) and never change the result.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from engine.attention import attention
from engine.parallel.state import ParallelState


@dataclass(frozen=True)
class SequenceShard:
    """The sequence split in force during one forward: `valid_len` real tokens, padded to
    `local_len * sequence_degree`."""

    state: ParallelState
    valid_len: int
    local_len: int


_CURRENT: SequenceShard | None = None


def current_shard() -> SequenceShard | None:
    return _CURRENT


@contextmanager
def sequence_shard(shard: SequenceShard) -> Iterator[SequenceShard]:
    """Makes self-attention layers sequence-parallel for the duration of one model forward."""
    global _CURRENT
    previous, _CURRENT = _CURRENT, shard
    try:
        yield shard
    finally:
        _CURRENT = previous


# -- Ulysses ---------------------------------------------------------------------------------


def _all_to_all(x: torch.Tensor, group: dist.ProcessGroup, size: int) -> torch.Tensor:
    """All-to-all over dim 0 of x [size, ...]: chunk i goes to rank i, chunk j arrives from rank j."""
    out = torch.empty_like(x)
    if dist.get_backend(group) == "gloo":  # gloo has no all_to_all: gather everything, keep ours
        gathered = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(gathered, x.contiguous(), group=group)
        rank = dist.get_rank(group)
        return torch.stack([chunk[rank] for chunk in gathered])
    dist.all_to_all_single(out, x.contiguous(), group=group)
    return out


def sequence_to_heads(x: torch.Tensor, group: dist.ProcessGroup, size: int) -> torch.Tensor:
    """[B, S_local, H, D] sequence shard -> [B, S_local * size, H / size, D] head shard."""
    b, s, h, d = x.shape
    x = x.reshape(b, s, size, h // size, d).permute(2, 0, 1, 3, 4)  # [size, B, S_local, H/size, D]
    x = _all_to_all(x, group, size)  # chunk j: rank j's tokens, our heads
    return x.permute(1, 0, 2, 3, 4).reshape(b, size * s, h // size, d)


def heads_to_sequence(x: torch.Tensor, group: dist.ProcessGroup, size: int) -> torch.Tensor:
    """[B, S_local * size, H / size, D] head shard -> [B, S_local, H, D] sequence shard."""
    b, s_full, h_local, d = x.shape
    s = s_full // size
    x = x.reshape(b, size, s, h_local, d).permute(1, 0, 2, 3, 4)  # [size, B, S_local, H/size, D]
    x = _all_to_all(x, group, size)  # chunk j: our tokens, rank j's heads
    return x.permute(1, 2, 0, 3, 4).reshape(b, s, size * h_local, d)


# -- ring ------------------------------------------------------------------------------------


def attention_with_lse(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention that also returns the log-sum-exp of each query's scores, for merging partial
    results. q [B, Sq, H, D], k/v [B, Sk, H, D] -> (out [B, Sq, H, D] float32, lse [B, H, Sq] float32)."""
    scale = 1.0 / math.sqrt(query.shape[-1])
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), scale=scale
        )[:2]
        return out.transpose(1, 2).float(), lse.float()
    scores = torch.einsum("bqhd,bkhd->bhqk", query.float(), key.float()) * scale  # [B, H, Sq, Sk]
    lse = torch.logsumexp(scores, dim=-1)  # [B, H, Sq]
    out = torch.einsum("bhqk,bkhd->bqhd", torch.exp(scores - lse[..., None]), value.float())
    return out, lse


def _merge(
    out: torch.Tensor | None, lse: torch.Tensor | None, block_out: torch.Tensor, block_lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two softmax-normalised partial attentions over disjoint key sets."""
    if out is None or lse is None:
        return block_out, block_lse
    new_lse = torch.logaddexp(lse, block_lse)  # [B, H, Sq]
    keep = torch.exp(lse - new_lse).transpose(1, 2)[..., None]  # [B, Sq, H, 1]
    take = torch.exp(block_lse - new_lse).transpose(1, 2)[..., None]
    return out * keep + block_out * take, new_lse


def ring_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    group: dist.ProcessGroup,
    ring_ranks: list[int],
    ring_rank: int,
    block_valid: list[int],
) -> torch.Tensor:
    """Each rank's K/V block visits every rank once; the next block's transfer overlaps the
    current block's attention. `block_valid[i]` = real (unpadded) rows of ring block i."""
    size = len(ring_ranks)
    send_to, recv_from = ring_ranks[(ring_rank + 1) % size], ring_ranks[(ring_rank - 1) % size]
    kv = torch.stack([key, value]).contiguous()  # [2, B, S_blk, h, D]
    out = lse = None
    for step in range(size):
        pending = None
        if step < size - 1:
            incoming = torch.empty_like(kv)
            pending = dist.batch_isend_irecv(
                [dist.P2POp(dist.isend, kv, send_to, group), dist.P2POp(dist.irecv, incoming, recv_from, group)]
            )
        block = (ring_rank - step) % size  # the ring block whose K/V we hold now
        valid = block_valid[block]
        if valid > 0:
            block_out, block_lse = attention_with_lse(query, kv[0][:, :valid], kv[1][:, :valid])
            out, lse = _merge(out, lse, block_out, block_lse)
        if pending is not None:
            for request in pending:
                request.wait()
            kv = incoming
    assert out is not None, "ring block 0 always holds real tokens"
    return out.to(query.dtype)


# -- the entry point -------------------------------------------------------------------------


def sequence_parallel_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, shard: SequenceShard, backend: str
) -> torch.Tensor:
    """Self-attention over the whole (padded) sequence for this rank's shard [B, S_local, H, D]."""
    state, config = shard.state, shard.state.config
    u, r = config.ulysses_degree, config.ring_degree
    if u > 1:
        query, key, value = (sequence_to_heads(t, state.ulysses_group, u) for t in (query, key, value))
    block_len = shard.local_len * u  # tokens per ring block after the Ulysses exchange
    block_valid = [max(0, min(block_len, shard.valid_len - i * block_len)) for i in range(r)]
    if r > 1:
        out = ring_attention(
            query, key, value, group=state.ring_group, ring_ranks=state.ring_ranks,
            ring_rank=state.ring_rank, block_valid=block_valid,
        )  # fmt: skip
    else:
        valid = block_valid[0]
        out = attention(query, key[:, :valid], value[:, :valid], backend)
    if u > 1:
        out = heads_to_sequence(out, state.ulysses_group, u)
    return out
