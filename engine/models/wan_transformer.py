"""The Wan DiT (Wan2.1 T2V and I2V, Wan2.2 TI2V-5B and A14B experts), in plain torch.

Parameter names and config fields are those of diffusers' `WanTransformer3DModel`, so the
`transformer/` (and `transformer_2/`) folder of a diffusers Wan checkpoint (config.json +
safetensors, sharded or not) loads unchanged. The variants differ only in config fields:

- Wan2.1 I2V: `image_dim` (CLIP width) adds an image embedder and `added_kv_proj_dim` a second
  key/value projection in every cross-attention, attending to the image tokens (put before the
  512 text tokens in one context, so the blocks' signature is the text-to-video one); the two
  attention outputs are summed before the output projection. `in_channels` is 36 (noise 16 +
  first-frame mask 4 + encoded condition 16), which the pipeline concatenates.
- Wan2.2 TI2V-5B: 48 channels, and the timestep may be given per token ([B, S]) so that the
  clean first latent frame is told it is at t = 0 (diffusers' `expand_timesteps`).
- Wan2.2 A14B: two ordinary models; the pipeline switches between them.

The arithmetic follows diffusers too (float32 norms, modulation and residuals); the parity tests
hold the two together.

Hooks for later work attach without editing this file: blocks are separate modules called in
one loop, `run_blocks` (`forward` pre/post hooks can offload or prefetch them; a step cache wraps
the whole loop to skip it on some steps), attention goes through
`engine.attention.attention`, and RoPE tables are computed once per forward for the whole
sequence so a sequence-parallel rank can slice its shard.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from engine.attention import attention, resolve_backend
from engine.models.ops import (
    apply_rope,
    gated_residual,
    layer_norm_fp32,
    linear_gelu_tanh,
    modulate,
    rms_norm,
    rope_for_grid,
    rope_frequencies,
    timestep_embedding,
)
from engine.models.safetensors_io import load_state_dict, save_state_dict
from engine.parallel.attention import current_shard, sequence_parallel_attention, sequence_shard
from engine.parallel.sharding import gather_sequence, shard_like, shard_sequence
from engine.parallel.state import get_parallel_state

# The text encoder's padded length: an image-conditioned model's cross-attention context is the
# image tokens followed by exactly this many text tokens (diffusers splits it the same way).
TEXT_TOKENS = 512


@dataclass(frozen=True)
class WanTransformerConfig:
    """The fields of diffusers' `WanTransformer3DModel` config.json, same names and defaults.

    `image_dim` and `added_kv_proj_dim` are set together (Wan2.1 I2V); `pos_embed_seq_len` adds
    a learned position embedding to the image tokens (first-last-frame checkpoints).
    """

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    qk_norm: str | None = "rms_norm_across_heads"
    eps: float = 1e-6
    image_dim: int | None = None
    added_kv_proj_dim: int | None = None
    rope_max_seq_len: int = 1024
    pos_embed_seq_len: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        if (self.image_dim is None) != (self.added_kv_proj_dim is None):
            raise ValueError("image_dim and added_kv_proj_dim are set together (image cross-attention) or not at all")
        if self.pos_embed_seq_len is not None and self.image_dim is None:
            raise ValueError("pos_embed_seq_len needs image_dim")
        if self.qk_norm != "rms_norm_across_heads":
            raise NotImplementedError(f"qk_norm={self.qk_norm!r}; only 'rms_norm_across_heads' is supported")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> WanTransformerConfig:
        """Build from a config.json dict; diffusers' private keys ("_class_name", ...) are ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in raw if not k.startswith("_") and k not in known)
        if unknown:
            raise ValueError(f"unknown WanTransformer3DModel config fields: {unknown}")
        return cls(**{k: v for k, v in raw.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return {"_class_name": "WanTransformer3DModel", **asdict(self), "patch_size": list(self.patch_size)}


class RMSNorm(nn.Module):
    """Holds the `weight` that `ops.rms_norm` scales by (name matches `torch.nn.RMSNorm`)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in float32, returned in the input's dtype (diffusers' `FP32LayerNorm`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm_fp32(x, self.eps, self.weight, self.bias).to(x.dtype)


class WanAttention(nn.Module):
    """Multi-head attention with RMS-normed q/k; self-attention when `context` is None.

    With `added_kv_proj_dim` (I2V cross-attention) the queries also attend to the image tokens
    through their own key/value projections (`add_k_proj`, `add_v_proj`, key norm
    `norm_added_k`), and the two attention outputs are summed before `to_out`.
    """

    def __init__(self, dim: int, heads: int, eps: float, added_kv_proj_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])  # index 0 matches diffusers' key "to_out.0"
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        self.add_k_proj: nn.Linear | None = None
        self.add_v_proj: nn.Linear | None = None
        if added_kv_proj_dim is not None:
            self.add_k_proj = nn.Linear(added_kv_proj_dim, dim)
            self.add_v_proj = nn.Linear(added_kv_proj_dim, dim)
            self.norm_added_k = RMSNorm(dim, eps)
        self.backend = "sdpa"  # concrete name; set by WanTransformer3DModel.set_attention_backend
        # Set by fuse_projections (after loading): one GEMM instead of three (or two).
        self.to_qkv: nn.Linear | None = None
        self.to_kv: nn.Linear | None = None
        self.to_added_kv: nn.Linear | None = None

    def fuse_projections(self, *, self_attention: bool) -> None:
        """Replace to_q/to_k/to_v by one GEMM (self-attention: q|k|v) or to_q + one k|v GEMM
        (cross-attention). One wide GEMM reads the activations once and keeps the tensor cores
        busier than three narrow ones; the arithmetic per output element is unchanged.

        Irreversible for this instance: a fused model can run but not be saved.
        """
        if self.to_qkv is not None or self.to_kv is not None:
            return
        parts = (self.to_q, self.to_k, self.to_v) if self_attention else (self.to_k, self.to_v)
        if self_attention:
            self.to_qkv = _concat_linears(parts)
            del self.to_q
        else:
            self.to_kv = _concat_linears(parts)
        del self.to_k, self.to_v
        if self.add_k_proj is not None and self.add_v_proj is not None:
            self.to_added_kv = _concat_linears((self.add_k_proj, self.add_v_proj))
            self.add_k_proj = self.add_v_proj = None

    def _project(self, x: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """q, k, v projections [B, S|L, C] through the fused GEMMs when present."""
        if self.to_qkv is not None:
            return self.to_qkv(x).chunk(3, dim=-1)
        kv_source = x if context is None else context
        query = self.to_q(x)
        if self.to_kv is not None:
            return (query, *self.to_kv(kv_source).chunk(2, dim=-1))
        return query, self.to_k(kv_source), self.to_v(kv_source)

    def _image_attention(self, query: torch.Tensor, image_context: torch.Tensor) -> torch.Tensor:
        """Attention of query [B, S, H, D] to the image tokens [B, L_img, C] -> [B, S, H, D]."""
        if self.to_added_kv is not None:
            key, value = self.to_added_kv(image_context).chunk(2, dim=-1)
        else:
            assert self.add_k_proj is not None and self.add_v_proj is not None
            key, value = self.add_k_proj(image_context), self.add_v_proj(image_context)
        key = self.norm_added_k(key).unflatten(2, (self.heads, -1))  # [B, L_img, H, D]
        value = value.unflatten(2, (self.heads, -1))
        return attention(query, key, value, self.backend).type_as(query)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        # x [B, S, C]; context [B, L, C] (cross-attention) or None (self-attention). With image
        # cross-attention the context is [B, L_img + 512, C]: the image tokens, then the text's.
        image_context = None
        if context is not None and (self.add_k_proj is not None or self.to_added_kv is not None):
            image_context, context = context[:, :-TEXT_TOKENS], context[:, -TEXT_TOKENS:]
        query, key, value = self._project(x, context)
        query = self.norm_q(query).unflatten(2, (self.heads, -1))  # [B, S, H, D]
        key = self.norm_k(key).unflatten(2, (self.heads, -1))  # [B, L, H, D]
        value = value.unflatten(2, (self.heads, -1))  # [B, L, H, D]
        if rope is not None:
            query = apply_rope(query, *rope)
            key = apply_rope(key, *rope)
        shard = current_shard() if context is None else None
        if shard is not None:  # sequence-parallel self-attention; cross-attention stays local
            out = sequence_parallel_attention(query, key, value, shard, self.backend)
        else:
            out = attention(query, key, value, self.backend)  # [B, S, H, D]
        out = out.flatten(2, 3).type_as(query)  # [B, S, C]
        if image_context is not None:
            # Summed in the activation dtype after both roundings, as diffusers does.
            out = out + self._image_attention(query, image_context).flatten(2, 3)
        return self.to_out[0](out)


def _concat_linears(parts: tuple[nn.Linear, ...]) -> nn.Linear:
    """One Linear whose output is the concatenation of `parts`' outputs (same input)."""
    weight = torch.cat([p.weight for p in parts])  # [sum(out), in]
    bias = torch.cat([p.bias for p in parts])
    fused = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


class GELUProjection(nn.Module):
    """Linear followed by tanh-approximated GELU (diffusers' `GELU`, parameter `proj`).

    With `fused_epilogue` (CUDA, half precision) the GELU runs inside the GEMM as a cuBLASLt
    epilogue on the float32 accumulator, so the [tokens, ffn_dim] activation is written once
    instead of written, read and written again: the widest tensor of the block.
    """

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)
        self.fused_epilogue = False  # set by engine.optimize on CUDA

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_epilogue and not getattr(self.proj, "lora_active", False):  # a LoRA slot needs the plain GEMM
            return linear_gelu_tanh(x, self.proj.weight, self.proj.bias)
        return nn.functional.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """dim -> ffn_dim -> dim; `net` indices 0 and 2 match diffusers' keys (1 was dropout)."""

    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.net = nn.ModuleList([GELUProjection(dim, ffn_dim), nn.Identity(), nn.Linear(ffn_dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class WanTransformerBlock(nn.Module):
    """Self-attention, cross-attention to the text (and image), feed-forward; adaLN-modulated by
    the timestep."""

    def __init__(self, config: WanTransformerConfig) -> None:
        super().__init__()
        dim = config.inner_dim
        self.eps = config.eps
        self.attn1 = WanAttention(dim, config.num_attention_heads, config.eps)
        self.attn2 = WanAttention(dim, config.num_attention_heads, config.eps, config.added_kv_proj_dim)
        self.norm2 = (
            FP32LayerNorm(dim, config.eps, elementwise_affine=True) if config.cross_attn_norm else nn.Identity()
        )
        self.ffn = FeedForward(dim, config.ffn_dim)
        # norm1/norm3 have no parameters: they are `ops.modulate` calls.
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        timestep_proj: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        # x [B, S, C]; context [B, L, C] (I2V: [B, L_img + 512, C]); rope cos/sin [1, S, 1, D];
        # timestep_proj [B, 6, C] (one timestep per sample) or [B, S, 6, C] (one per token)
        if timestep_proj.dim() == 4:
            modulation = (self.scale_shift_table.unsqueeze(0) + timestep_proj.float()).unbind(2)  # each [B, S, C]
        else:
            modulation = (self.scale_shift_table + timestep_proj.float()).chunk(6, dim=1)  # each [B, 1, C]
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = modulation  # float32

        x = gated_residual(x, self.attn1(modulate(x, shift_sa, scale_sa, self.eps), rope=rope), gate_sa)
        x = x + self.attn2(self.norm2(x.float()).type_as(x), context=context)
        x = gated_residual(x, self.ffn(modulate(x, shift_ff, scale_ff, self.eps)), gate_ff)
        return x


class TimestepEmbedder(nn.Module):
    """Linear-SiLU-Linear over the sinusoidal timestep embedding (diffusers' `TimestepEmbedding`)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(nn.functional.silu(self.linear_1(x)))


class TextProjection(nn.Module):
    """Linear-GELU(tanh)-Linear from the text encoder's width to the model's."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(nn.functional.gelu(self.linear_1(x), approximate="tanh"))


class ImageEmbedder(nn.Module):
    """CLIP image tokens [B, L_img, image_dim] -> [B, L_img, C]: LayerNorm, Linear-GELU-Linear,
    LayerNorm (diffusers' `WanImageEmbedding`; `ff.net.0.proj` / `ff.net.2` keys, exact GELU)."""

    def __init__(self, in_dim: int, dim: int, pos_embed_seq_len: int | None) -> None:
        super().__init__()
        self.norm1 = FP32LayerNorm(in_dim, 1e-5, elementwise_affine=True)
        self.ff = nn.Module()
        self.ff.net = nn.ModuleList([nn.Module(), nn.Identity(), nn.Linear(in_dim, dim)])
        self.ff.net[0].proj = nn.Linear(in_dim, in_dim)
        self.norm2 = FP32LayerNorm(dim, 1e-5, elementwise_affine=True)
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_embed_seq_len, in_dim)) if pos_embed_seq_len else None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.pos_embed is not None:  # first-last-frame: two images' tokens side by side
            image = image.view(-1, 2 * image.shape[1], image.shape[2]) + self.pos_embed
        x = self.norm1(image)
        x = nn.functional.gelu(self.ff.net[0].proj(x))
        return self.norm2(self.ff.net[2](x))


class ConditionEmbedder(nn.Module):
    """Timestep -> (temb, 6 modulation vectors); text [B, L, text_dim] -> [B, L, C]; image
    tokens [B, L_img, image_dim] -> [B, L_img, C] (I2V models).

    A timestep [B] gives temb [B, C] and modulation [B, 6C]; a per-token timestep [B, S] gives
    temb [B, S, C] and modulation [B, S, 6C].
    """

    def __init__(self, config: WanTransformerConfig) -> None:
        super().__init__()
        dim = config.inner_dim
        self.freq_dim = config.freq_dim
        self.time_embedder = TimestepEmbedder(config.freq_dim, dim)
        self.time_proj = nn.Linear(dim, dim * 6)
        self.text_embedder = TextProjection(config.text_dim, dim)
        self.image_embedder = (
            ImageEmbedder(config.image_dim, dim, config.pos_embed_seq_len) if config.image_dim is not None else None
        )

    def forward(self, timestep: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t_freq = timestep_embedding(timestep.flatten(), self.freq_dim)  # [B (x S), freq_dim] float32
        t_freq = t_freq.unflatten(0, timestep.shape).to(self.time_embedder.linear_1.weight.dtype)
        temb = self.time_embedder(t_freq).type_as(text)  # [B, (S,) C]
        timestep_proj = self.time_proj(nn.functional.silu(temb))  # [B, (S,) 6C]
        return temb, timestep_proj, self.text_embedder(text)

    def embed_image(self, image: torch.Tensor) -> torch.Tensor:
        if self.image_embedder is None:
            raise ValueError("this model has no image embedder (image_dim is None)")
        return self.image_embedder(image)


class WanRotaryEmbedding(nn.Module):
    """Precomputed 3-D RoPE tables: head_dim split into time, height and width parts."""

    def __init__(self, head_dim: int, max_seq_len: int) -> None:
        super().__init__()
        h_dim = w_dim = 2 * (head_dim // 6)
        self.split_sizes = (head_dim - h_dim - w_dim, h_dim, w_dim)
        cos, sin = zip(*(rope_frequencies(d, max_seq_len) for d in self.split_sizes), strict=True)
        # Built on the CPU explicitly so meta-device construction still yields real tables.
        self.register_buffer("freqs_cos", torch.cat(cos, dim=1), persistent=False)  # [P, head_dim]
        self.register_buffer("freqs_sin", torch.cat(sin, dim=1), persistent=False)

    def forward(self, grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_for_grid(self.freqs_cos, self.freqs_sin, self.split_sizes, grid)


class WanTransformer3DModel(nn.Module):
    """Predicts the flow (velocity) for noisy video latents given a timestep and text embeddings."""

    # Kept in float32 whatever the load dtype (same list as diffusers): small, precision-critical.
    _keep_in_fp32_modules: ClassVar[tuple[str, ...]] = (
        "rope",
        "time_embedder",
        "scale_shift_table",
        "norm1",
        "norm2",
        "norm3",
    )
    # Keys some checkpoints carry that this architecture does not use.
    _keys_to_ignore_on_load_unexpected: ClassVar[tuple[str, ...]] = ("norm_added_q",)

    def __init__(self, config: WanTransformerConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.inner_dim
        self.rope = WanRotaryEmbedding(config.attention_head_dim, config.rope_max_seq_len)
        self.patch_embedding = nn.Conv3d(
            config.in_channels, dim, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.condition_embedder = ConditionEmbedder(config)
        self.blocks = nn.ModuleList(WanTransformerBlock(config) for _ in range(config.num_layers))
        self.proj_out = nn.Linear(dim, config.out_channels * math.prod(config.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.fused = False
        self.compiled = False  # set by engine.optimize.compile_blocks
        self.sequence_parallel = False  # set by the engine once the parallel state exists

    def set_attention_backend(self, backend: str) -> str:
        """Select the attention kernel for every layer ("auto" resolved for this model's device)."""
        resolved = resolve_backend(backend, self.proj_out.weight.device)
        for module in self.modules():
            if isinstance(module, WanAttention):
                module.backend = resolved
        return resolved

    def fuse_projections(self) -> WanTransformer3DModel:
        """Fuse the q/k/v GEMMs of every block (see `WanAttention.fuse_projections`)."""
        for block in self.blocks:
            block.attn1.fuse_projections(self_attention=True)
            block.attn2.fuse_projections(self_attention=False)
        self.fused = True
        return self

    def run_blocks(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        timestep_proj: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """The blocks in order over x [B, S(_local), C]: the seam a step cache wraps
        (`engine.acceleration.step_cache` replaces this method on the instance for one request)."""
        for block in self.blocks:
            x = block(x, context, timestep_proj, rope)
        return x

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden_states [B, C_in, F, H, W]; timestep [B], or [B, S] one per token (S = the
        patch grid's size, Wan2.2 TI2V); encoder_hidden_states [B, L, text_dim];
        encoder_hidden_states_image [B, L_img, image_dim] CLIP tokens (I2V models only)
        -> flow prediction [B, C_out, F, H, W] in hidden_states' dtype.

        Classifier-free guidance runs as one batch: B=2 with (cond, uncond) text embeddings and
        the same image tokens.
        """
        batch, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        grid = (frames // p_t, height // p_h, width // p_w)  # (F', H', W') token grid

        rope = self.rope(grid)  # cos, sin [1, S, 1, D], S = F'*H'*W'
        x = self.patch_embedding(hidden_states)  # [B, C, F', H', W']
        x = x.flatten(2).transpose(1, 2).contiguous()  # [B, S, C]

        temb, timestep_proj, context = self.condition_embedder(timestep, encoder_hidden_states)
        per_token = timestep.dim() == 2
        timestep_proj = timestep_proj.unflatten(-1, (6, -1))  # [B, 6, C] or [B, S, 6, C]
        if encoder_hidden_states_image is not None:
            if context.shape[1] != TEXT_TOKENS:
                raise ValueError(f"image-conditioned calls take {TEXT_TOKENS} text tokens, got {context.shape[1]}")
            image_context = self.condition_embedder.embed_image(encoder_hidden_states_image)  # [B, L_img, C]
            # One context, image tokens first (diffusers' layout); each cross-attention splits it.
            context = torch.cat([image_context, context], dim=1)  # [B, L_img + 512, C]
        elif self.condition_embedder.image_embedder is not None:
            raise ValueError("this model is image-conditioned: pass encoder_hidden_states_image")

        parallel = get_parallel_state() if self.sequence_parallel else None
        if parallel is not None and parallel.config.sequence_degree > 1:
            # Split once, run every block on this rank's tokens, gather once (no per-layer gathers).
            x, rope, shard = shard_sequence(x, rope, parallel)  # [B, S_local, C]
            if per_token:  # the modulation follows its tokens
                timestep_proj = shard_like(timestep_proj, shard)  # [B, S_local, 6, C]
            with sequence_shard(shard):
                x = self.run_blocks(x, context, timestep_proj, rope)
            x = gather_sequence(x, shard)  # [B, S, C]
        else:
            x = self.run_blocks(x, context, timestep_proj, rope)

        if per_token:
            shift, scale = (self.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).unbind(2)  # each [B, S, C]
        else:
            shift, scale = (self.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)  # each [B, 1, C]
        x = modulate(x, shift, scale, self.config.eps)
        x = self.proj_out(x)  # [B, S, C_out * p_t * p_h * p_w]

        x = x.reshape(batch, *grid, p_t, p_h, p_w, -1)  # [B, F', H', W', p_t, p_h, p_w, C_out]
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C_out, F', p_t, H', p_h, W', p_w]
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)  # [B, C_out, F, H, W]

    # -- checkpoints -------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> WanTransformer3DModel:
        """Load a diffusers-format `transformer/` folder (config.json + safetensors, sharded or not).

        The model is built on the meta device (no random init, no double memory) and the
        checkpoint tensors are assigned in, cast to `dtype` except `_keep_in_fp32_modules`.
        """
        folder = Path(folder)
        config = WanTransformerConfig.from_dict(json.loads((folder / "config.json").read_text()))
        with torch.device("meta"):
            model = cls(config)
        state = load_state_dict(folder, device=device)
        state = {
            name: tensor
            for name, tensor in state.items()
            if not any(part in cls._keys_to_ignore_on_load_unexpected for part in name.split("."))
        }
        state = {name: tensor.to(model.param_dtype(name, dtype)) for name, tensor in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        return model.to(device).eval().requires_grad_(False)

    def param_dtype(self, name: str, dtype: torch.dtype) -> torch.dtype:
        """The dtype parameter `name` is kept in when the model runs in `dtype`."""
        if any(part in self._keep_in_fp32_modules for part in name.split(".")):
            return torch.float32
        return dtype

    def cast(self, dtype: torch.dtype) -> WanTransformer3DModel:
        """Cast parameters to `dtype` in place, keeping `_keep_in_fp32_modules` in float32."""
        for name, param in self.named_parameters():
            param.data = param.data.to(self.param_dtype(name, dtype))
        return self

    def save_pretrained(self, folder: str | Path, max_shard_bytes: int | None = None) -> None:
        """Write config.json and safetensors as diffusers does (sharded when `max_shard_bytes`)."""
        if self.fused:
            raise RuntimeError("a model with fused projections has no checkpoint layout; save before fusing")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        save_state_dict(self.state_dict(), folder, max_shard_bytes=max_shard_bytes)
