"""Memory: planner decisions, offload as "same output, less memory", tiled VAE decode.

On the CPU the offload hooks run with synchronous copies (compute device = offload target =
CPU), which proves the bookkeeping (same parameters, same compiled graph, bit-identical latents,
hook order, memory released after use) but not the CUDA stream/event overlap: that is measured by
benchmarks/bench_offload.py on a GPU, whose outputs it also compares with the resident run.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses

import pytest
import torch

from engine.memory.footprint import transformer_footprint
from engine.memory.offload import ComponentOffload, LayerwiseOffload
from engine.memory.vae_tiling import decode_tiled, tile_starts
from engine.models.tiny import TINY_TRANSFORMER, TINY_VAE
from engine.models.wan_transformer import WanTransformer3DModel, WanTransformerConfig
from engine.optimize import compile_blocks
from spec.memory import (
    GIB,
    MemoryBudgetError,
    RequestShape,
    plan_memory,
    wan_dit_param_bytes,
)
from spec.registry import get_spec

WAN_14B = get_spec("wan2.1-t2v-14b").footprint
SHAPE_480P = RequestShape(width=832, height=480, num_frames=81, cfg=True)


# -- planner -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "heads"),
    [
        (TINY_TRANSFORMER, TINY_TRANSFORMER.num_attention_heads),
        (WanTransformerConfig(num_attention_heads=12, ffn_dim=8960, num_layers=30), 12),
    ],
)
def test_analytic_dit_size_matches_the_module(config: WanTransformerConfig, heads: int) -> None:
    expected = transformer_footprint(config, torch.bfloat16)
    actual = wan_dit_param_bytes(
        dim=config.inner_dim,
        ffn_dim=config.ffn_dim,
        num_layers=config.num_layers,
        text_dim=config.text_dim,
        freq_dim=config.freq_dim,
        head_dim=config.attention_head_dim,
    )
    assert actual == expected


def test_planner_picks_the_cheapest_plan_that_fits() -> None:
    roomy = plan_memory(WAN_14B, SHAPE_480P, 80 * GIB)
    assert roomy.offload == "none" and not roomy.vae_tiling and roomy.text_encoder == "resident"
    tight = plan_memory(WAN_14B, SHAPE_480P, 24 * GIB)
    assert tight.offload == "layerwise" and tight.text_encoder == "offload" and tight.vae == "offload"
    tighter = plan_memory(WAN_14B, SHAPE_480P, 16 * GIB)
    assert tighter.offload == "layerwise" and tighter.resident_blocks < tight.resident_blocks
    for plan, budget in ((roomy, 80), (tight, 24), (tighter, 16)):
        assert plan.estimated_peak_bytes <= budget * GIB
    # one more block resident would not fit: the planner keeps as many as the budget allows
    over = plan_memory(WAN_14B, SHAPE_480P, None, offload="layerwise", resident_blocks=tight.resident_blocks + 1)
    assert over.estimated_peak_bytes > 24 * GIB


def test_a_request_too_large_for_the_budget_is_refused_naming_the_budget() -> None:
    with pytest.raises(MemoryBudgetError, match=r"budget of 3\.00 GiB") as info:
        plan_memory(WAN_14B, SHAPE_480P, 3 * GIB)
    assert info.value.param == "memory" and "needs" in str(info.value)
    with pytest.raises(MemoryBudgetError, match="offload=none"):
        plan_memory(WAN_14B, SHAPE_480P, 40 * GIB, offload="none")


def test_vae_tiling_only_when_the_untiled_decode_does_not_fit() -> None:
    footprint = get_spec("wan2.1-t2v-1.3b").footprint
    shape_720p = RequestShape(width=1280, height=720, num_frames=81, cfg=True)
    untiled = plan_memory(footprint, shape_720p, 60 * GIB)
    assert not untiled.vae_tiling
    tiled = plan_memory(footprint, shape_720p, 16 * GIB, text_encoder_on_cpu=True)
    assert tiled.vae_tiling and tiled.vae_tile is not None and tiled.text_encoder == "cpu"
    with pytest.raises(MemoryBudgetError):
        plan_memory(footprint, shape_720p, 16 * GIB, text_encoder_on_cpu=True, vae_tiling="off", offload="none")


def test_contradictory_memory_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="layer-wise"):
        plan_memory(WAN_14B, SHAPE_480P, None, offload="none", resident_blocks=3)
    with pytest.raises(ValueError, match="offload must be"):
        plan_memory(WAN_14B, SHAPE_480P, None, offload="sometimes")
    with pytest.raises(ValueError, match="resident_blocks"):
        plan_memory(WAN_14B, SHAPE_480P, None, offload="layerwise", resident_blocks=41)


# -- layer-wise offload --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def four_block_model() -> WanTransformer3DModel:
    torch.manual_seed(0)
    config = dataclasses.replace(TINY_TRANSFORMER, num_layers=4)
    return WanTransformer3DModel(config).eval().requires_grad_(False).fuse_projections()


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 16, 3, 8, 12, generator=generator)  # CFG batch of two
    return latents, torch.tensor([900.0, 900.0]), torch.randn(2, 24, TINY_TRANSFORMER.text_dim, generator=generator)


def test_layerwise_offload_gives_bit_identical_output_and_releases_blocks(four_block_model, inputs) -> None:
    model = copy.deepcopy(four_block_model)
    with torch.inference_mode():
        expected = model(*inputs)
    trace: list[tuple[str, int]] = []
    offload = LayerwiseOffload(model.blocks, torch.device("cpu"), resident_blocks=1, trace=trace)
    assert offload.offloaded_bytes > 0
    assert all(group.buffer.untyped_storage().nbytes() == 0 for group in offload.groups if group is not None)
    with torch.inference_mode():
        assert torch.equal(model(*inputs), expected)
        assert torch.equal(model(*inputs), expected)  # a second step reloads what the first released
    # block 0 resident; block i+1 is prefetched before block i computes; each released after use
    assert trace[:8] == [
        ("prefetch", 1),  # pre-hook of resident block 0
        ("prefetch", 2),  # pre-hook of block 1 ...
        ("wait", 1),  # ... then waits for its own copy
        ("release", 1),
        ("prefetch", 3),
        ("wait", 2),
        ("release", 2),
        ("wait", 3),
    ]
    assert trace[8] == ("release", 3) and len(trace) == 18
    assert all(group.buffer.untyped_storage().nbytes() == 0 for group in offload.groups if group is not None)


def test_naive_offload_copies_each_block_just_before_it_runs(four_block_model, inputs) -> None:
    model = copy.deepcopy(four_block_model)
    with torch.inference_mode():
        expected = model(*inputs)
    trace: list[tuple[str, int]] = []
    LayerwiseOffload(model.blocks, torch.device("cpu"), prefetch=False, trace=trace)
    with torch.inference_mode():
        assert torch.equal(model(*inputs), expected)
    assert trace == [(event, i) for i in range(4) for event in ("load", "wait", "release")]


def test_offload_and_compiled_blocks_share_one_graph_and_agree(four_block_model, inputs) -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = compile_blocks(copy.deepcopy(four_block_model))
    with torch.inference_mode():
        expected = model(*inputs)
        LayerwiseOffload(model.blocks, torch.device("cpu"))  # after compiling: the same graph stays valid
        actual = model(*inputs)
    assert torch.equal(actual, expected)
    assert counters["stats"]["unique_graphs"] <= 2  # one per parameter layout, never one per block


def test_component_offload_loads_only_around_forward() -> None:
    module = torch.nn.Linear(8, 4)
    expected = module(torch.ones(2, 8))
    offload = ComponentOffload(module, torch.device("cpu")).attach_to_forward()
    assert offload.group.buffer.untyped_storage().nbytes() == 0
    assert torch.equal(module(torch.ones(2, 8)), expected)
    assert offload.group.buffer.untyped_storage().nbytes() == 0
    with offload.on_device():
        assert offload.group.loaded
    assert not offload.group.loaded


# -- engine --------------------------------------------------------------------------------------


@pytest.mark.parametrize("offload", ["layerwise", "model"])
def test_offloaded_engine_gives_the_same_latents(tiny_engine, models_dir, make_request, offload: str) -> None:
    from engine.engine import Engine

    engine = Engine("tiny-wan", device="cpu", models_dir=models_dir, offload=offload, vae_tiling="on")
    request = make_request()
    expected = tiny_engine.generate(request)
    result = engine.generate(request)
    assert torch.equal(result.latents, expected.latents)
    assert (result.frames == expected.frames).all()  # the tiny frame fits one tile: exact
    assert result.memory_plan is not None and result.memory_plan.offload == offload
    assert result.memory_plan.vae_tiling and result.memory_plan.to_dict()["estimated_peak_bytes"] > 0


def test_engine_refuses_a_budget_it_cannot_fit_before_loading(models_dir) -> None:
    from engine.engine import Engine

    with pytest.raises(MemoryBudgetError, match=r"budget of 0\.00 GiB"):
        Engine("tiny-wan", device="cpu", models_dir=models_dir, vram_budget_gb=0.001)


def test_cli_parses_memory_flags() -> None:
    from engine.cli import add_generate_arguments

    parser = argparse.ArgumentParser()
    add_generate_arguments(parser)
    args = parser.parse_args(["--model", "m", "--prompt", "p", "--offload", "layerwise", "--vram-budget", "12.5"])
    assert args.offload == "layerwise" and args.vram_budget == 12.5 and args.vae_tiling is None
    assert parser.parse_args(["--model", "m", "--prompt", "p"]).offload is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--prompt", "p", "--offload", "everything"])


# -- tiled VAE -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(**TINY_VAE).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    return torch.randn(1, 16, 2, 8, 36, generator=torch.Generator().manual_seed(3))  # [1, z, F', h, w]


# Tiles of 20 latent pixels overlapping by 4: [0, 20) and [16, 36), i.e. an overlap at pixels
# [128, 160). The random decoder reaches ~80 px past a tile's border, so pixels [0, 48) and
# [240, 288) see no border effect at all.
TILE, OVERLAP = 20, 4
FAR_FROM_SEAMS = torch.cat([torch.arange(0, 48), torch.arange(240, 288)])


def test_tile_starts_cover_the_length_with_overlap() -> None:
    assert tile_starts(36, 20, 4) == [0, 16]
    assert tile_starts(24, 12, 4) == [0, 8, 12]
    assert tile_starts(8, 12, 4) == [0]
    with pytest.raises(ValueError):
        tile_starts(24, 4, 4)


def _column_errors(vae, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    untiled = vae.decode(latents, return_dict=False)[0]  # [1, 3, 5, 64, 288]
    tiled = decode_tiled(vae, latents, TILE, OVERLAP)
    assert tiled.shape == untiled.shape
    return (tiled - untiled).abs().amax(dim=(0, 1, 2, 3)), tiled, untiled  # worst error per column [W]


def _largest_jump(video: torch.Tensor) -> float:
    return (video[..., 1:] - video[..., :-1]).abs().amax().item()


@torch.no_grad()
def test_tiled_decode_is_exact_away_from_seams_when_the_decoder_is_local(vae, latents) -> None:
    local = copy.deepcopy(vae)
    for block in local.decoder.mid_block.attentions:  # the decoder's only non-local operation
        torch.nn.init.zeros_(block.proj.weight)
        torch.nn.init.zeros_(block.proj.bias)
    error, tiled, untiled = _column_errors(local, latents)
    assert error[FAR_FROM_SEAMS].max() < 1e-4
    # At the seam: a random decoder's border effects (zero padding instead of neighbours), blended
    # convexly; bounded, and the blend adds no discontinuity the untiled video does not have.
    assert error.max() < 1.0
    assert _largest_jump(tiled) <= 1.05 * _largest_jump(untiled)


@torch.no_grad()
def test_tiled_decode_is_close_with_the_decoders_spatial_attention(vae, latents) -> None:
    # The mid block attends over the whole frame; a tile sees only itself, so small errors remain
    # everywhere (measured ~0.1 of a [-1, 1] range with random weights).
    error, tiled, untiled = _column_errors(vae, latents)
    assert error[FAR_FROM_SEAMS].max() < 0.25
    assert error.max() < 1.0
    assert _largest_jump(tiled) <= 1.05 * _largest_jump(untiled)


# -- image-to-video and Wan2.2 -------------------------------------------------------------------

I2V_14B = WanTransformerConfig(in_channels=36, image_dim=1280, added_kv_proj_dim=5120)
TI2V_5B = WanTransformerConfig(num_attention_heads=24, ffn_dim=14336, num_layers=30, in_channels=48, out_channels=48)


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("wan2.1-i2v-14b-480p", I2V_14B),
        ("wan2.2-ti2v-5b", TI2V_5B),
        ("wan2.2-i2v-a14b", dataclasses.replace(WanTransformerConfig(), in_channels=36)),
    ],
)
def test_known_footprints_match_the_modules(name: str, config: WanTransformerConfig) -> None:
    block, other = transformer_footprint(config, torch.bfloat16)  # counted on the meta device
    footprint = get_spec(name).footprint
    assert (footprint.dit_block_bytes, footprint.dit_other_bytes) == (block, other)


def test_two_experts_stay_resident_when_they_fit_and_swap_on_an_80_gb_gpu() -> None:
    pair = get_spec("wan2.2-t2v-a14b").footprint
    shape = RequestShape(width=1280, height=720, num_frames=81, cfg=True)
    h200 = plan_memory(pair, shape, int(135 * GIB))
    assert (h200.offload, h200.experts) == ("none", "resident")
    gpu_80 = plan_memory(pair, shape, int(76 * GIB))
    assert (gpu_80.offload, gpu_80.experts) == ("none", "swap")
    assert gpu_80.estimated_peak_bytes < h200.estimated_peak_bytes - pair.dit_bytes * 0.9
    assert "experts swap" in gpu_80.describe() and gpu_80.to_dict()["experts"] == "swap"
    # a single-expert model says so
    assert plan_memory(get_spec("wan2.1-t2v-14b").footprint, shape, int(135 * GIB)).experts == "one"


def test_swapped_experts_give_the_same_latents_and_report_the_swap(models_dir) -> None:
    from engine.engine import Engine
    from spec.request import GenerationRequest

    request = GenerationRequest(
        prompt="a cat", width=64, height=64, num_frames=5, num_inference_steps=6, guidance_scale=4.0,
        guidance_scale_2=2.0, seed=3, fps=8,
    )  # fmt: skip
    resident = Engine("tiny-wan2.2-t2v-a14b", device="cpu", models_dir=models_dir)
    swapped = Engine("tiny-wan2.2-t2v-a14b", device="cpu", models_dir=models_dir, offload="model")
    assert (resident.placement.experts, swapped.placement.experts) == ("resident", "swap")
    expected, result = resident.generate(request), swapped.generate(request)
    assert torch.equal(result.latents, expected.latents)
    assert result.stage_timings_s["expert_swap"] > 0 and "expert_swap" not in expected.stage_timings_s
    assert result.memory_plan is not None and result.memory_plan.experts == "swap"
    # between generations both experts are back in host memory (storage freed on the device side)
    assert all(not offload.group.loaded for offload in swapped._offloads["experts"])


@torch.no_grad()
def test_wan22_vae_tiled_decode_matches_diffusers() -> None:
    from diffusers import AutoencoderKLWan

    from engine.models.tiny import TINY_VAE22

    torch.manual_seed(0)
    vae22 = AutoencoderKLWan(**TINY_VAE22).eval().requires_grad_(False)
    z = torch.randn(1, 48, 2, 4, 6, generator=torch.Generator().manual_seed(5))  # -> [1, 3, 5, 64, 96]
    untiled = vae22.decode(z, return_dict=False)[0]
    one_tile = decode_tiled(vae22, z, tile=8, overlap=2)  # the whole frame in one tile: exact
    assert one_tile.shape == untiled.shape == (1, 3, 5, 64, 96)
    assert ((one_tile - untiled).norm() / untiled.norm()).item() < 1e-4
    tiled = decode_tiled(vae22, z, tile=4, overlap=2)  # two tiles across: close, seamless
    assert (tiled - untiled).abs().max() < 1.0
    assert _largest_jump(tiled) <= 1.05 * _largest_jump(untiled)
