"""The memory planner: where each component lives and whether the VAE decodes in tiles.

Pure Python (no torch), so the API can ask "does this request fit a worker with N GB?" without
loading anything. Given a model's footprint (`ModelFootprint`), a request's shape and a budget in
bytes, `plan_memory` picks, cheapest first:

1. `none`: the DiT, the text encoder and the VAE all stay on the GPU;
2. `model`: each component is on the GPU only while its stage runs (component offload);
3. `layerwise`: the text encoder and the VAE as in `model`; the DiT's blocks live in pinned host
   memory and stream through the GPU one at a time (block i+1 copied while block i computes), with
   as many blocks kept resident as the budget allows;

and for two-expert models (Wan2.2 A14B) whether both experts stay on the GPU (`experts`
"resident") or only the one whose steps are running, the idle one waiting in pinned host memory
and swapped in (one copy of its weights) when the boundary timestep is crossed ("swap"). Under
`none` both placements are tried, resident first; under `model` the experts always swap (each
is on the GPU only for its steps); under `layerwise` each expert streams its own blocks and
both keep their resident blocks.

and, per request, the VAE decodes untiled when that fits and in spatial tiles otherwise. A request
that fits under no allowed plan raises `MemoryBudgetError` naming the budget and the estimate,
before any work starts.

The estimates are deliberately simple and slightly pessimistic: weights are exact (from the
config; a registered model's footprint is its spec's `footprint`), activations are per-token (DiT)
and per-pixel (VAE) coefficients calibrated on an H100 (see `DIT_BYTES_PER_TOKEN_CHANNEL`,
`VAE_LIVE_TENSORS`; `benchmarks/bench_offload.py` prints the measured peaks beside the estimates).
Stage estimates are keyed by `spec.stages.Stage` names.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from spec.errors import CodedError
from spec.settings import OFFLOAD_MODES, VAE_TILING_MODES
from spec.stages import Stage

GIB = 2**30
Placement = Literal["resident", "offload", "cpu"]

# DiT activations: bytes per (batch x token x model-channel), plus per (batch x token x ffn-channel).
# Calibrated on an H100 (benchmarks/results/offload-wan2.1-t2v-14b-h100-2026-11-23.json): the
# 14B at 832x480x81, CFG batch 2, compiled, peaks at 5.7-5.8 GiB above its weights (estimate 5.8).
DIT_BYTES_PER_TOKEN_CHANNEL = 16
DIT_BYTES_PER_TOKEN_FFN_CHANNEL = 1
# VAE decode: live float32 tensors of one latent frame's output (4 video frames x the decoder's
# full-resolution channels) at the peak, causal caches included. Calibrated on the same H100 run:
# 1280x720x81 measured 20.7 GiB untiled (estimate 21.9) and 6.9 GiB in 512px tiles (6.9).
VAE_LIVE_TENSORS = 15
VAE_FRAMES_PER_LATENT = 4
# Text encoding: UMT5 activations for two 512-token prompts (small next to its weights).
TEXT_ENCODER_ACTIVATION_BYTES = GIB // 2
# Allocator fragmentation and workspaces (cuBLAS, cuDNN) on top of every estimate.
OVERHEAD_FRACTION = 0.10
# Tile sizes tried for the VAE (latent pixels; x8 on screen), largest first, and their overlap.
VAE_TILE_SIZES = (64, 48, 32, 24, 16)
VAE_TILE_OVERLAP = 8
# Blocks in flight under layer-wise offload: the one computing and the one being prefetched.
BLOCKS_IN_FLIGHT = 2


class MemoryBudgetError(CodedError, ValueError):
    """A request (or a model) that does not fit the memory budget under any allowed plan.

    `param` is "memory" so the API can report it like a `SpecViolationError` (a 422 with a reason).
    """

    code = "insufficient_gpu_memory"
    param = "memory"


@dataclass(frozen=True)
class ModelFootprint:
    """What a model needs on the GPU, in bytes, independent of any request.

    `dit_block_bytes` is one transformer block's weights (all blocks are alike);
    `dit_other_bytes` the rest of the DiT (embeddings, output projection, RoPE tables).
    """

    dit_block_bytes: int
    dit_num_blocks: int
    dit_other_bytes: int
    dit_dim: int
    dit_ffn_dim: int
    text_encoder_bytes: int
    vae_bytes: int
    patch_size: tuple[int, int, int] = (1, 2, 2)
    vae_temporal_factor: int = 4
    vae_spatial_factor: int = 8
    vae_decoder_channels: int = 96  # the decoder's full-resolution width (base_dim)
    dit_experts: int = 1  # 2 for Wan2.2 A14B: two DiTs of this size
    image_encoder_bytes: int = 0  # the CLIP vision tower of Wan2.1 I2V (float32)

    @property
    def dit_bytes(self) -> int:
        """One expert's weights."""
        return self.dit_block_bytes * self.dit_num_blocks + self.dit_other_bytes


def wan_dit_param_bytes(
    *,
    dim: int,
    ffn_dim: int,
    num_layers: int,
    text_dim: int,
    freq_dim: int,
    head_dim: int,
    in_channels: int = 16,
    out_channels: int = 16,
    patch_size: tuple[int, int, int] = (1, 2, 2),
    rope_max_seq_len: int = 1024,
    dtype_bytes: int = 2,
) -> tuple[int, int]:
    """(bytes of one block, bytes of the rest) of a Wan2.1 DiT whose weights are `dtype_bytes`
    wide, with diffusers' `_keep_in_fp32_modules` (norm2, scale_shift_table, time_embedder, RoPE)
    in float32. A test holds this to the parameter count of the real module."""
    patch = math.prod(patch_size)
    block_wide = 8 * (dim * dim + dim) + 2 * 2 * dim + 2 * dim * ffn_dim + ffn_dim + dim  # 2 attn, q/k norms, ffn
    block_fp32 = 2 * dim + 6 * dim  # norm2 weight+bias, scale_shift_table
    other_wide = (
        in_channels * patch * dim + dim  # patch embedding
        + dim * 6 * dim + 6 * dim  # time_proj
        + text_dim * dim + dim + dim * dim + dim  # text embedder
        + dim * out_channels * patch + out_channels * patch  # proj_out
    )  # fmt: skip
    other_fp32 = freq_dim * dim + dim + dim * dim + dim + 2 * dim + 2 * rope_max_seq_len * head_dim
    return block_wide * dtype_bytes + block_fp32 * 4, other_wide * dtype_bytes + other_fp32 * 4


# UMT5-XXL encoder (5.68e9 parameters) in bf16 and the Wan2.1 VAE (1.27e8) in float32; both are
# the same for every Wan2.1 text-to-video model.
UMT5_XXL_BF16_BYTES = 11_360_000_000
WAN_VAE_FP32_BYTES = 507_600_000


# The Wan2.2 VAE (7.05e8 parameters, float32), CLIP ViT-H/14 vision tower (6.32e8, float32), and
# the extra weights of the I2V DiT per block (add_k/add_v projections + norm_added_k, bf16 with the
# norm in bf16 too) and outside the blocks (image embedder: 2 LayerNorms in float32, 2 Linears).
WAN22_VAE_FP32_BYTES = 2_820_000_000
CLIP_VIT_H_FP32_BYTES = 2_530_000_000
CLIP_DIM = 1280


def wan21_footprint(
    *,
    dim: int,
    ffn_dim: int,
    num_layers: int,
    heads: int,
    in_channels: int = 16,
    out_channels: int = 16,
    image_dim: int | None = None,
    experts: int = 1,
    vae_bytes: int = WAN_VAE_FP32_BYTES,
    vae_spatial_factor: int = 8,
    vae_decoder_channels: int = 96,
) -> ModelFootprint:
    """The footprint of a Wan DiT checkpoint in bf16 (any variant: the config fields that change
    the weights are arguments; a test holds each against the module built from them)."""
    block, other = wan_dit_param_bytes(
        dim=dim,
        ffn_dim=ffn_dim,
        num_layers=num_layers,
        text_dim=4096,
        freq_dim=256,
        head_dim=dim // heads,
        in_channels=in_channels,
        out_channels=out_channels,
    )
    if image_dim is not None:
        block += 2 * (dim * dim + dim) * 2 + dim * 2  # add_k_proj, add_v_proj, norm_added_k
        other += (image_dim * image_dim + image_dim + image_dim * dim + dim) * 2  # image embedder GEMMs
        other += (2 * image_dim + 2 * dim) * 4  # its two LayerNorms (float32)
    return ModelFootprint(
        dit_block_bytes=block,
        dit_num_blocks=num_layers,
        dit_other_bytes=other,
        dit_dim=dim,
        dit_ffn_dim=ffn_dim,
        text_encoder_bytes=UMT5_XXL_BF16_BYTES,
        vae_bytes=vae_bytes,
        vae_spatial_factor=vae_spatial_factor,
        vae_decoder_channels=vae_decoder_channels,
        dit_experts=experts,
        image_encoder_bytes=CLIP_VIT_H_FP32_BYTES if image_dim is not None else 0,
    )


# The checkpoints served through diffusers (engine.pipelines.diffusers_backend), every component in bf16
# (each registry spec's `footprint`):
# parameter counts of their published configs (`engine.models.diffusers_configs`, instantiated on the
# meta device; a test recomputes them). Repeated blocks of two kinds (HunyuanVideo) count as one
# average size.
DIFFUSERS_FOOTPRINTS: dict[str, ModelFootprint] = {
    "ltx-video": ModelFootprint(
        dit_block_bytes=134311936,
        dit_num_blocks=28,
        dit_other_bytes=86036736,
        dit_dim=2048,
        dit_ffn_dim=8192,
        text_encoder_bytes=9787813888,
        vae_bytes=838387810,
        patch_size=(1, 1, 1),
        vae_temporal_factor=8,
        vae_spatial_factor=32,
        vae_decoder_channels=128,
    ),
    "cogvideox-2b": ModelFootprint(
        dit_block_bytes=112163072,
        dit_num_blocks=30,
        dit_other_bytes=22675584,
        dit_dim=1920,
        dit_ffn_dim=7680,
        text_encoder_bytes=9787813888,
        vae_bytes=431167814,
        patch_size=(1, 2, 2),
        vae_temporal_factor=4,
        vae_spatial_factor=8,
        vae_decoder_channels=128,
    ),
    "cogvideox-5b": ModelFootprint(
        dit_block_bytes=264395264,
        dit_num_blocks=42,
        dit_other_bytes=35965056,
        dit_dim=3072,
        dit_ffn_dim=12288,
        text_encoder_bytes=9787813888,
        vae_bytes=431167814,
        patch_size=(1, 2, 2),
        vae_temporal_factor=4,
        vae_spatial_factor=8,
        vae_decoder_channels=128,
    ),
    "cogvideox-5b-i2v": ModelFootprint(
        dit_block_bytes=264395264,
        dit_num_blocks=42,
        dit_other_bytes=145574016,
        dit_dim=3072,
        dit_ffn_dim=12288,
        text_encoder_bytes=9787813888,
        vae_bytes=431167814,
        patch_size=(1, 2, 2),
        vae_temporal_factor=4,
        vae_spatial_factor=8,
        vae_decoder_channels=128,
    ),
    "mochi-1": ModelFootprint(
        dit_block_bytes=413710080,
        dit_num_blocks=48,
        dit_other_bytes=197271648,
        dit_dim=3072,
        dit_ffn_dim=12288,
        text_encoder_bytes=9787813888,
        vae_bytes=919497222,
        patch_size=(1, 2, 2),
        vae_temporal_factor=6,
        vae_spatial_factor=8,
        vae_decoder_channels=128,
    ),
    "hunyuanvideo": ModelFootprint(
        dit_block_bytes=415343276,
        dit_num_blocks=60,
        dit_other_bytes=721428608,
        dit_dim=3072,
        dit_ffn_dim=12288,
        text_encoder_bytes=15256494592,
        vae_bytes=492957606,
        patch_size=(1, 2, 2),
        vae_temporal_factor=4,
        vae_spatial_factor=8,
        vae_decoder_channels=128,
    ),
}


@dataclass(frozen=True)
class RequestShape:
    """The parts of a request that decide its memory: output size, frames and CFG batching."""

    width: int
    height: int
    num_frames: int
    cfg: bool

    @classmethod
    def of(cls, request: object) -> RequestShape:
        """From a `GenerationRequest` (or anything with its fields)."""
        return cls(request.width, request.height, request.num_frames, bool(request.do_cfg))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class MemoryPlan:
    """Where each component lives for one request, and the estimates behind the choice.

    `offload`: "none" | "model" | "layerwise" (the DiT's placement; text encoder and VAE are
    offloaded under "model" and "layerwise"). `resident_blocks`: blocks kept on the GPU under
    layer-wise offload. `text_encoder` / `vae` / `dit`: "resident" | "offload" | "cpu".
    `vae_tile`: latent tile size (x8 pixels) when `vae_tiling`. Estimates are in bytes, per stage.
    `budget_bytes` is None when nothing was budgeted (CPU runs). `experts`: "one" (single-DiT
    model), "resident" (both experts on the GPU), "swap" (the idle expert in pinned host memory,
    swapped in at the boundary) or "layerwise" (each expert streams its blocks).
    """

    offload: str
    resident_blocks: int
    dit: str
    text_encoder: str
    vae: str
    vae_tiling: bool
    vae_tile: int | None
    vae_tile_overlap: int
    budget_bytes: int | None
    stage_estimates_bytes: dict[str, int] = field(default_factory=dict)
    experts: str = "one"

    @property
    def estimated_peak_bytes(self) -> int:
        return max(self.stage_estimates_bytes.values(), default=0)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready, for a job record."""
        return {**asdict(self), "estimated_peak_bytes": self.estimated_peak_bytes}

    def describe(self) -> str:
        dit = self.offload if self.offload != "layerwise" else f"layerwise ({self.resident_blocks} blocks resident)"
        tiling = f"tiled ({self.vae_tile * 8}px tiles)" if self.vae_tiling and self.vae_tile else "untiled"
        budget = "no budget" if self.budget_bytes is None else f"budget {self.budget_bytes / GIB:.1f} GiB"
        experts = "" if self.experts == "one" else f", experts {self.experts}"
        return (
            f"offload {dit}{experts}, text encoder {self.text_encoder}, VAE {self.vae} {tiling}; "
            f"estimated peak {self.estimated_peak_bytes / GIB:.1f} GiB, {budget}"
        )


def dit_activation_bytes(footprint: ModelFootprint, shape: RequestShape) -> int:
    """Peak activation bytes of one DiT forward (all CFG branches in one batch)."""
    p_t, p_h, p_w = footprint.patch_size
    latent_frames = (shape.num_frames - 1) // footprint.vae_temporal_factor + 1
    tokens = (
        (latent_frames // p_t)
        * (shape.height // footprint.vae_spatial_factor // p_h)
        * (shape.width // footprint.vae_spatial_factor // p_w)
    )
    batch_tokens = (2 if shape.cfg else 1) * tokens
    return batch_tokens * (
        DIT_BYTES_PER_TOKEN_CHANNEL * footprint.dit_dim + DIT_BYTES_PER_TOKEN_FFN_CHANNEL * footprint.dit_ffn_dim
    )


def vae_decode_bytes(footprint: ModelFootprint, shape: RequestShape, tile: int | None) -> int:
    """Activation and output bytes of the VAE decode, untiled (`tile` None) or in latent tiles.

    The decoder streams one latent frame at a time through its causal cache, so the activations
    scale with one latent frame's output area (the whole frame, or one tile); the float32 output
    video is held once by the tiled path and twice (a concatenation) by diffusers' untiled one.
    """
    factor = footprint.vae_spatial_factor
    if tile is None:
        area, output_copies = shape.height * shape.width, 2
    else:
        area = min(tile * factor, shape.height) * min(tile * factor, shape.width)
        output_copies = 1
    live = VAE_LIVE_TENSORS * VAE_FRAMES_PER_LATENT * footprint.vae_decoder_channels * area * 4
    output = output_copies * 3 * shape.num_frames * shape.height * shape.width * 4
    return live + output


def _with_overhead(nbytes: int) -> int:
    return int(nbytes * (1 + OVERHEAD_FRACTION))


def _stage_estimates(
    footprint: ModelFootprint,
    shape: RequestShape,
    offload: str,
    resident_blocks: int,
    text_encoder: str,
    tile: int | None,
    experts: str = "one",
) -> dict[str, int]:
    """Peak bytes per stage under one placement: what is resident throughout plus the stage's own."""
    fp = footprint
    offloaded = offload != "none"
    te_weights = 0 if text_encoder == "cpu" else fp.text_encoder_bytes
    if offload == "layerwise":
        in_flight = min(BLOCKS_IN_FLIGHT, fp.dit_num_blocks - resident_blocks)
        dit_always = fp.dit_experts * (fp.dit_other_bytes + resident_blocks * fp.dit_block_bytes)
        dit_running = dit_always + in_flight * fp.dit_block_bytes
    elif offload == "model":
        dit_always, dit_running = 0, fp.dit_bytes  # one expert at a time
    elif experts == "swap":  # the active expert only; the idle one is released before the other loads
        dit_always = dit_running = fp.dit_bytes
    else:
        dit_always = dit_running = fp.dit_experts * fp.dit_bytes
    always = dit_always + (0 if offloaded else te_weights + fp.vae_bytes + fp.image_encoder_bytes)
    te_stage = 0 if text_encoder == "cpu" else TEXT_ENCODER_ACTIVATION_BYTES + (te_weights if offloaded else 0)
    return {
        Stage.TEXT_ENCODING.value: _with_overhead(always + te_stage),
        Stage.DENOISING.value: _with_overhead(always - dit_always + dit_running + dit_activation_bytes(fp, shape)),
        Stage.DECODING.value: _with_overhead(
            always + (fp.vae_bytes if offloaded else 0) + vae_decode_bytes(fp, shape, tile)
        ),
    }


def _fits(estimates: dict[str, int], budget: int) -> bool:
    return max(estimates.values()) <= budget


def plan_memory(
    footprint: ModelFootprint,
    shape: RequestShape,
    budget_bytes: int | None,
    *,
    offload: str = "auto",
    vae_tiling: str = "auto",
    text_encoder_on_cpu: bool = False,
    resident_blocks: int | None = None,
    experts_placement: str | None = None,
) -> MemoryPlan:
    """The cheapest plan for `shape` within `budget_bytes`; raises `MemoryBudgetError` if none fits.

    `offload` "auto" tries none, model, layerwise in that order; an explicit mode is checked as
    given. `vae_tiling` "auto" tiles only when the untiled decode does not fit ("on": always,
    "off": never). `resident_blocks` (layerwise only) fixes the number of resident blocks;
    None keeps as many as fit. `experts_placement` fixes a two-expert model's `experts` (None:
    the cheapest that fits). With `budget_bytes` None nothing is checked: the plan is the
    requested mode (auto -> none) with the estimates filled in.
    """
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, got {offload!r}")
    if vae_tiling not in VAE_TILING_MODES:
        raise ValueError(f"vae_tiling must be one of {', '.join(VAE_TILING_MODES)}, got {vae_tiling!r}")
    if resident_blocks is not None:
        if offload not in ("layerwise", "auto"):
            raise ValueError(f"resident_blocks applies to layer-wise offload only, not offload={offload!r}")
        if not 0 <= resident_blocks <= footprint.dit_num_blocks:
            raise ValueError(f"resident_blocks must be in [0, {footprint.dit_num_blocks}], got {resident_blocks}")
    if budget_bytes is not None and budget_bytes <= 0:
        raise MemoryBudgetError(f"the memory budget must be positive, got {budget_bytes / GIB:.2f} GiB")
    text_encoder = "cpu" if text_encoder_on_cpu else None
    modes = ("none", "model", "layerwise") if offload == "auto" else (offload,)
    two = footprint.dit_experts > 1
    tiles: tuple[int | None, ...] = {"auto": (None, *VAE_TILE_SIZES), "on": VAE_TILE_SIZES, "off": (None,)}[vae_tiling]

    smallest: tuple[int, str] | None = None
    for mode in modes:
        te = text_encoder or ("resident" if mode == "none" else "offload")
        if mode == "layerwise":
            fixed = resident_blocks is not None
            candidates = [resident_blocks] if fixed else list(range(footprint.dit_num_blocks, -1, -1))
        else:
            candidates = [footprint.dit_num_blocks if mode != "model" else 0]
        if not two:
            expert_options = ["one"]
        else:
            expert_options = {"none": ["resident", "swap"], "model": ["swap"], "layerwise": ["layerwise"]}[mode]
        if experts_placement is not None:
            expert_options = [e for e in expert_options if e == experts_placement]
        for blocks, experts, tile in itertools.product(candidates, expert_options, tiles):
            assert blocks is not None
            layer_blocks = blocks if mode == "layerwise" else 0
            estimates = _stage_estimates(footprint, shape, mode, layer_blocks, te, tile, experts)
            resident = {"layerwise": blocks, "none": footprint.dit_num_blocks}.get(mode, 0)
            plan = MemoryPlan(
                offload=mode,
                resident_blocks=resident,
                dit="resident" if mode == "none" else "offload",
                text_encoder=te,
                vae="resident" if mode == "none" else "offload",
                vae_tiling=tile is not None,
                vae_tile=tile,
                vae_tile_overlap=VAE_TILE_OVERLAP if tile is not None else 0,
                budget_bytes=budget_bytes,
                stage_estimates_bytes=estimates,
                experts=experts,
            )
            if budget_bytes is None or _fits(estimates, budget_bytes):
                return plan
            peak = max(estimates.values())
            if smallest is None or peak < smallest[0]:
                smallest = (peak, plan.describe())
    assert smallest is not None and budget_bytes is not None
    allowed = "any offload mode" if offload == "auto" else f"offload={offload}"
    raise MemoryBudgetError(
        f"{shape.width}x{shape.height}, {shape.num_frames} frames{' with CFG' if shape.cfg else ''} does not fit "
        f"the memory budget of {budget_bytes / GIB:.2f} GiB under {allowed}: the smallest plan "
        f"needs {smallest[0] / GIB:.2f} GiB ({smallest[1].split(';')[0]})"
    )


def plan_for_placement(
    placement: MemoryPlan, footprint: ModelFootprint, shape: RequestShape, *, vae_tiling: str = "auto"
) -> MemoryPlan:
    """Re-plan one request under a placement fixed at load time: only the VAE tiling may change.

    Raises `MemoryBudgetError` when the request does not fit the placement's budget.
    """
    kwargs = {"resident_blocks": placement.resident_blocks} if placement.offload == "layerwise" else {}
    plan = plan_memory(
        footprint,
        shape,
        placement.budget_bytes,
        offload=placement.offload,
        vae_tiling=vae_tiling,
        text_encoder_on_cpu=placement.text_encoder == "cpu",
        experts_placement=placement.experts if placement.experts != "one" else None,
        **kwargs,
    )
    return replace(plan, budget_bytes=placement.budget_bytes)
