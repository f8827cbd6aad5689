"""Small functional pieces of the Wan DiT, kept apart so they can be fused or compiled one by one.

Each mirrors diffusers' arithmetic (including where it upcasts to float32), because checkpoints
were trained against that numerics and the parity tests compare against it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, cos half first.

    timesteps [N] -> [N, dim] float32 (diffusers `Timesteps(flip_sin_to_cos=True, shift=0)`).
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    angles = timesteps[:, None].float() * torch.exp(exponent)[None, :]  # [N, half]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # [N, 2*half]
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def rope_frequencies(dim: int, max_positions: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for 1-D rotary embedding, each value repeated for its (even, odd) pair.

    Computed in float64 then rounded once, like diffusers. -> ([max_positions, dim], same) float32.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device="cpu") / dim))  # [dim/2]
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float64, device="cpu"), inv_freq)
    cos = angles.cos().repeat_interleave(2, dim=1).float()  # [P, dim]
    sin = angles.sin().repeat_interleave(2, dim=1).float()
    return cos, sin


def rope_for_grid(
    freqs_cos: torch.Tensor,
    freqs_sin: torch.Tensor,
    split_sizes: tuple[int, int, int],
    grid: tuple[int, int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """3-D rotary tables for a (frames, height, width) token grid, flattened in f-h-w order.

    freqs_* [P, D] hold the t/h/w tables side by side (widths `split_sizes`). Returns cos, sin of
    shape [1, F*H*W, 1, D]; a sequence-parallel rank slices dim 1 to its shard.
    """
    ppf, pph, ppw = grid
    out = []
    for table in (freqs_cos, freqs_sin):
        t_part, h_part, w_part = table.split(split_sizes, dim=1)
        parts = (
            t_part[:ppf].view(ppf, 1, 1, -1).expand(ppf, pph, ppw, -1),
            h_part[:pph].view(1, pph, 1, -1).expand(ppf, pph, ppw, -1),
            w_part[:ppw].view(1, 1, ppw, -1).expand(ppf, pph, ppw, -1),
        )
        out.append(torch.cat(parts, dim=-1).reshape(1, ppf * pph * ppw, 1, -1))
    return out[0], out[1]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved (even, odd) pairs of x [B, S, H, D] by the angles in cos/sin [1, S, 1, D]."""
    x_even, x_odd = x.unflatten(-1, (-1, 2)).unbind(-1)  # each [B, S, H, D/2]
    cos = cos[..., 0::2]
    sin = sin[..., 1::2]
    # Computed in float32 (the tables are), rounded once to x's dtype; stack+flatten rather than
    # strided writes so that a compiler fuses it with the q/k RMSNorm into one pass.
    rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)  # [B, S, H, D/2, 2]
    return rotated.flatten(-2).type_as(x)


def layer_norm_fp32(
    x: torch.Tensor, eps: float, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """LayerNorm over the last dim computed in float32; returns float32."""
    return F.layer_norm(
        x.float(),
        (x.shape[-1],),
        weight.float() if weight is not None else None,
        bias.float() if bias is not None else None,
        eps,
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim (the q/k norm, across all heads at once)."""
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """adaLN: LayerNorm(x) * (1 + scale) + shift, in float32, cast back to x's dtype.

    x [B, S, C]; shift/scale [B, 1, C] float32.
    """
    return (layer_norm_fp32(x, eps) * (1 + scale) + shift).type_as(x)


def gated_residual(x: torch.Tensor, update: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x + update * gate with the sum in float32 (gate [B, 1, C] float32), cast back to x's dtype."""
    return (x.float() + update.float() * gate).type_as(x)


def linear_gelu_tanh(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(x @ weight.T + bias) as one cuBLASLt GEMM with a GELU epilogue.

    CUDA only: cuBLASLt's GELU epilogue is the tanh approximation Wan uses, while the CPU kernel
    behind the same op applies the exact (erf) GELU. x [..., K], weight [N, K] -> [..., N].
    """
    if not x.is_cuda:
        raise RuntimeError("linear_gelu_tanh needs CUDA (the CPU kernel's GELU is not the tanh form)")
    out = torch._addmm_activation(bias, x.reshape(-1, x.shape[-1]), weight.t(), use_gelu=True)  # [M, N]
    return out.view(*x.shape[:-1], weight.shape[0])
