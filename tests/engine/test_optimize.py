"""Every speed-up against the plain path on random inputs: same output (float32 tolerances)."""

from __future__ import annotations

import copy

import pytest
import torch

from engine.models.tiny import TINY_TRANSFORMER
from engine.models.wan_transformer import WanTransformer3DModel
from engine.optimize import compile_blocks, should_compile


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.fixture(scope="module")
def plain_model() -> WanTransformer3DModel:
    torch.manual_seed(0)
    return WanTransformer3DModel(TINY_TRANSFORMER).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 16, 3, 8, 12, generator=generator)  # [B, C, F', H', W']
    timestep = torch.tensor([900.0, 900.0])
    text = torch.randn(2, 24, TINY_TRANSFORMER.text_dim, generator=generator)
    return latents, timestep, text


@torch.inference_mode()
def test_fused_projections_give_the_same_output(plain_model, inputs) -> None:
    fused = copy.deepcopy(plain_model).fuse_projections()
    assert fused.blocks[0].attn1.to_qkv is not None and not hasattr(fused.blocks[0].attn1, "to_q")
    assert fused.blocks[0].attn2.to_kv is not None and hasattr(fused.blocks[0].attn2, "to_q")
    assert relative_error(fused(*inputs), plain_model(*inputs)) < 1e-6


def test_a_fused_model_refuses_to_save(plain_model, tmp_path) -> None:
    fused = copy.deepcopy(plain_model).fuse_projections()
    with pytest.raises(RuntimeError, match="fused"):
        fused.save_pretrained(tmp_path)


@torch.inference_mode()
def test_compiled_blocks_match_eager(plain_model, inputs) -> None:
    compiled = compile_blocks(copy.deepcopy(plain_model).fuse_projections())
    expected = plain_model(*inputs)
    assert relative_error(compiled(*inputs), expected) < 1e-5
    # a second shape compiles its own graph and is just as exact
    latents, timestep, text = inputs
    assert (
        relative_error(compiled(latents[:1], timestep[:1], text[:1]), plain_model(latents[:1], timestep[:1], text[:1]))
        < 1e-5
    )


def test_compile_auto_means_cuda_only() -> None:
    assert should_compile("auto", torch.device("cuda")) and not should_compile("auto", torch.device("cpu"))
    assert should_compile("on", torch.device("cpu")) and not should_compile("off", torch.device("cuda"))
    with pytest.raises(ValueError):
        should_compile("sometimes", torch.device("cpu"))


def test_compiled_engine_generates_the_same_latents_and_reports_compile_once(
    tiny_engine, models_dir, make_request
) -> None:
    from engine.engine import Engine

    compiled_engine = Engine("tiny-wan", device="cpu", models_dir=models_dir, compile="on")
    assert compiled_engine.compiled and compiled_engine.components.transformer.compiled
    request = make_request()
    expected = tiny_engine.generate(request)
    steps: list[int] = []
    first = compiled_engine.generate(request, on_step=lambda info: steps.append(info.step))
    assert steps == list(range(1, request.num_inference_steps + 1))
    assert relative_error(first.latents, expected.latents) < 1e-5
    assert "compile" in first.stage_timings_s
    second = compiled_engine.generate(request)
    assert "compile" not in second.stage_timings_s  # compiled code reused by the next job
    assert torch.equal(second.latents, first.latents)
    # a step cache wraps the compiled blocks from outside: same skips, same result as eager
    for options in ({"cache": "fbcache", "skip_steps": [2]}, {"cache": "magcache", "skip_steps": [1, 2]}):
        cached = make_request(acceleration=options)
        eager, compiled = tiny_engine.generate(cached), compiled_engine.generate(cached)
        assert compiled.acceleration["skipped_steps"] == eager.acceleration["skipped_steps"] == options["skip_steps"]
        assert relative_error(compiled.latents, eager.latents) < 1e-5
