"""Fast modes on the CPU with tiny-wan: the lossless default untouched, step caches that skip
exactly what they say, FP8 emulation against a reference quantize-dequantize, option validation."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from torch import nn

from engine.acceleration.calibration import MAGCACHE_RATIOS, TEACACHE_COEFFICIENTS, magcache_schedule
from engine.acceleration.fp8 import FP8_MAX, Fp8UnsupportedError, Fp8Weights, fp8_matmul, quantize_rows
from engine.models.tiny import TINY_TRANSFORMER
from engine.models.wan_transformer import WanTransformer3DModel
from engine.parallel import ParallelConfig
from engine.parallel.launch import launch
from spec.acceleration import (
    PRESETS,
    AccelerationError,
    AccelerationOptions,
    parse_acceleration,
    resolve_acceleration,
)
from spec.registry import list_specs

METHODS = ("teacache", "magcache", "fbcache")
STEPS = 8


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.fixture(scope="module")
def lossless(tiny_engine):
    from spec.request import GenerationRequest

    from .conftest import BASE_REQUEST

    return tiny_engine.generate(GenerationRequest(**{**BASE_REQUEST, "num_inference_steps": STEPS}))


def count_block_calls(model: WanTransformer3DModel) -> tuple[list[int], list]:
    """calls[i] counts forwards of block i; returns (calls, handles)."""
    calls = [0] * len(model.blocks)
    handles = []
    for index, block in enumerate(model.blocks):

        def hook(module, args, index=index):  # type: ignore[no-untyped-def]
            calls[index] += 1

        handles.append(block.register_forward_pre_hook(hook))
    return calls, handles


# -- the lossless default ------------------------------------------------------------------------


def test_acceleration_none_is_the_plain_path_bit_for_bit(tiny_engine, make_request, lossless) -> None:
    model = tiny_engine.components.transformer
    for value in (None, "none", {"cache": None, "fp8": False}):
        result = tiny_engine.generate(make_request(num_inference_steps=STEPS, acceleration=value))
        assert torch.equal(result.latents, lossless.latents)
        assert result.acceleration["preset"] == "none"
        assert result.acceleration["steps_computed"] == STEPS and result.acceleration["steps_skipped"] == 0
        assert result.acceleration["precision"] == "float32"
    assert "run_blocks" not in vars(model)  # nothing left attached


@pytest.mark.parametrize("method", METHODS)
def test_threshold_zero_reproduces_the_uncached_output_exactly(method, tiny_engine, make_request, lossless) -> None:
    result = tiny_engine.generate(
        make_request(num_inference_steps=STEPS, acceleration={"cache": method, "threshold": 0.0})
    )
    assert torch.equal(result.latents, lossless.latents)
    assert result.acceleration["steps_skipped"] == 0


# -- skipping --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_a_forced_schedule_skips_exactly_the_steps_it_names(method, tiny_engine, make_request, lossless) -> None:
    model = tiny_engine.components.transformer
    calls, handles = count_block_calls(model)
    try:
        result = tiny_engine.generate(
            make_request(num_inference_steps=STEPS, acceleration={"cache": method, "skip_steps": [2, 3, 6]})
        )
    finally:
        for handle in handles:
            handle.remove()
    assert result.acceleration["skipped_steps"] == [2, 3, 6]
    assert result.acceleration["steps_computed"] == STEPS - 3
    # a skip runs no block (teacache, magcache) or only the first (fbcache)
    assert calls[-1] == STEPS - 3
    assert calls[0] == (STEPS if method == "fbcache" else STEPS - 3)
    # reused residuals move the result, a little
    assert 0 < relative_error(result.latents, lossless.latents) < 0.05


@pytest.mark.parametrize("method", METHODS)
def test_warmup_final_steps_and_the_skip_limit_bound_every_method(method, tiny_engine, make_request) -> None:
    options = {"cache": method, "threshold": 10.0, "warmup_steps": 2, "final_steps": 2, "max_consecutive_skips": 2}
    result = tiny_engine.generate(make_request(num_inference_steps=10, acceleration=options))
    # a threshold this large skips whenever the rules allow: steps 0-1 and 8-9 computed, runs of two
    assert result.acceleration["skipped_steps"] == [2, 3, 5, 6]


def test_presets_run_and_report_what_they_did(tiny_engine, make_request, lossless) -> None:
    result = tiny_engine.generate(make_request(num_inference_steps=STEPS, acceleration="balanced"))
    report = result.acceleration
    assert report["preset"] == "balanced" and report["options"]["cache"] == "magcache"
    assert report["steps_computed"] + report["steps_skipped"] == STEPS and report["steps_skipped"] > 0
    assert all(step >= PRESETS["balanced"].warmup_steps for step in report["skipped_steps"])
    assert relative_error(result.latents, lossless.latents) < 0.05


def test_magcache_follows_the_published_schedule() -> None:
    ratios = MAGCACHE_RATIOS["wan2.1-t2v-1.3b"]
    assert len(ratios) == 50 and magcache_schedule(ratios, 50) == list(ratios)
    stretched = magcache_schedule(ratios, 25)
    assert stretched[0] == ratios[0] and stretched[-1] == ratios[-1] and len(stretched) == 25
    assert set(TEACACHE_COEFFICIENTS) == {"wan2.1-t2v-1.3b", "wan2.1-t2v-14b"}


def test_the_cache_composes_with_layerwise_offload(tiny_engine, models_dir, make_request) -> None:
    from engine.engine import Engine

    offloaded = Engine("tiny-wan", device="cpu", models_dir=models_dir, offload="layerwise", resident_blocks=0)
    # fbcache runs the first block alone on a skipped step: its prefetch of block 1 must not leak
    request = make_request(num_inference_steps=STEPS, acceleration={"cache": "fbcache", "skip_steps": [2, 4, 5]})
    expected = tiny_engine.generate(request)
    result = offloaded.generate(request)
    assert torch.equal(result.latents, expected.latents)
    assert result.acceleration["skipped_steps"] == [2, 4, 5]


# -- parallel: every rank makes the same decision --------------------------------------------------


def _generate_rank(rank: int, config: ParallelConfig, folder: Path, request_fields: dict, out: Path) -> None:
    from engine.engine import Engine
    from spec.request import GenerationRequest

    engine = Engine(folder, device="cpu", parallel=config)
    result = engine.generate(GenerationRequest(**request_fields))
    torch.save({"latents": result.latents, "skipped": result.acceleration["skipped_steps"]}, out / f"{rank}.pt")


@pytest.mark.parametrize(("ulysses", "cfg"), [(1, 2), (2, 1)])
def test_parallel_ranks_skip_the_same_steps_as_one_process(
    ulysses, cfg, tiny_engine, tiny_folder, make_request, tmp_path: Path
) -> None:
    # fbcache measures each rank's own branch (CFG parallel; its own tokens under sequence
    # parallelism): the sums are reduced over the job, so the decisions equal the single process's
    # batched-CFG ones, and cond and uncond skip together.
    request = make_request(num_inference_steps=STEPS, acceleration={"cache": "fbcache", "threshold": 0.1})
    expected = tiny_engine.generate(request)
    assert expected.acceleration["steps_skipped"] > 0
    config = ParallelConfig(world_size=2, ulysses_degree=ulysses, ring_degree=1, cfg_degree=cfg)
    launch(_generate_rank, 2, config, tiny_folder, asdict(request), tmp_path, backend="gloo", timeout_s=120)
    ranks = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    assert all(r["skipped"] == expected.acceleration["skipped_steps"] for r in ranks)
    assert relative_error(ranks[0]["latents"], expected.latents) < 1e-5


# -- FP8 ----------------------------------------------------------------------------------------------


def reference_fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Quantize-dequantize by the book: symmetric e4m3, one scale per token and per output channel."""

    def fake_quant(t: torch.Tensor) -> torch.Tensor:
        scale = t.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 448.0
        return (t / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).float() * scale

    return fake_quant(x.reshape(-1, x.shape[-1])) @ fake_quant(weight).t() + bias


def test_fp8_emulation_matches_a_reference_quantize_dequantize() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 37, 64, generator=generator) * 3
    weight = torch.randn(48, 64, generator=generator) * 0.05
    bias = torch.randn(48, generator=generator)
    weight_fp8, weight_scale = quantize_rows(weight)
    assert weight_fp8.dtype == torch.float8_e4m3fn and weight_scale.shape == (48, 1)
    assert weight_fp8.float().abs().max() == FP8_MAX  # each row's largest weight maps to the top code
    got = fp8_matmul(x, weight_fp8, weight_scale, bias, emulate=True)
    expected = reference_fp8_linear(x, weight, bias).view(2, 37, 48)
    assert got.shape == (2, 37, 48)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert 1e-3 < relative_error(got, nn.functional.linear(x, weight, bias)) < 0.1  # quantized, not exact


def test_fp8_weights_switch_per_request_and_leave_the_bf16_path_untouched() -> None:
    torch.manual_seed(0)
    model = WanTransformer3DModel(TINY_TRANSFORMER).eval().requires_grad_(False).fuse_projections()
    latents, text = torch.randn(2, 16, 2, 8, 8), torch.randn(2, 7, TINY_TRANSFORMER.text_dim)
    timestep = torch.tensor([700.0, 700.0])
    with torch.inference_mode():
        before = model(latents, timestep, text)
        weights = Fp8Weights(model, emulate=True)
        # per block: q|k|v and out (self-attention), q, k|v and out (cross-attention), the FFN's two
        assert len(weights.linears) == 7 * TINY_TRANSFORMER.num_layers
        with weights.enabled():
            quantized = model(latents, timestep, text)
        after = model(latents, timestep, text)
    assert torch.equal(after, before)
    assert 0 < relative_error(quantized, before) < 0.1


def test_fp8_is_refused_without_fp8_hardware_and_emulated_on_request(tiny_engine, models_dir, make_request) -> None:
    with pytest.raises(Fp8UnsupportedError, match="CUDA") as refused:
        tiny_engine.generate(make_request(acceleration={"fp8": True}))
    assert refused.value.param == "acceleration.fp8"

    from engine.engine import Engine

    emulating = Engine("tiny-wan", device="cpu", models_dir=models_dir, fp8_emulation=True)
    request = make_request(num_inference_steps=STEPS)
    plain = emulating.generate(request)
    fp8 = emulating.generate(make_request(num_inference_steps=STEPS, acceleration={"fp8": True}))
    assert fp8.acceleration["precision"] == "fp8-emulated" and fp8.acceleration["steps_skipped"] == 0
    assert 0 < relative_error(fp8.latents, plain.latents) < 0.1
    assert torch.equal(emulating.generate(request).latents, plain.latents)  # switched off again


# -- options ---------------------------------------------------------------------------------------


def test_presets_and_explicit_options_parse() -> None:
    assert parse_acceleration(None).lossless and parse_acceleration("none").lossless
    fast = parse_acceleration("fast")
    assert fast.fp8 and fast.cache == "magcache" and fast.preset == "fast"
    tuned = parse_acceleration({"preset": "balanced", "threshold": 0.2, "skip_steps": [5, 3, 3]})
    assert tuned.cache == "magcache" and tuned.threshold == 0.2 and tuned.skip_steps == (3, 5)
    assert parse_acceleration(tuned.to_dict()) == tuned  # a recorded dict reads back the same


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ("turbo", "acceleration"),
        (42, "acceleration"),
        ({"cache": "deepcache"}, "acceleration.cache"),
        ({"threshold": -1}, "acceleration.threshold"),
        ({"threshold": "high"}, "acceleration.threshold"),
        ({"warmup_steps": 0}, "acceleration.warmup_steps"),
        ({"max_consecutive_skips": 1.5}, "acceleration.max_consecutive_skips"),
        ({"fp8": "yes"}, "acceleration.fp8"),
        ({"speed": 11}, "acceleration.speed"),
        ({"preset": "turbo"}, "acceleration.preset"),
        ({"skip_steps": [2]}, "acceleration.skip_steps"),  # no cache method to reuse
        ({"cache": "fbcache", "skip_steps": [0, 2]}, "acceleration.skip_steps"),  # step 0 fills the cache
        ({"cache": "fbcache", "skip_steps": [8]}, "acceleration.skip_steps"),  # past the last step
    ],
)
def test_bad_options_name_their_field(value, param) -> None:
    with pytest.raises(AccelerationError) as error:
        resolve_acceleration(value, supported=("teacache", "magcache", "fbcache", "fp8"), num_inference_steps=8)
    assert error.value.param == param


def test_the_registry_says_which_models_support_what() -> None:
    with pytest.raises(AccelerationError, match="does not support magcache") as error:
        resolve_acceleration("balanced", supported=("teacache", "fp8"), num_inference_steps=50)
    assert error.value.param == "acceleration.cache"
    for spec in list_specs():
        # a model offering magcache has a schedule to follow
        assert "magcache" not in spec.acceleration or spec.name in MAGCACHE_RATIOS
        # native Wan text-to-video models (one expert or two) run every preset; the others only "none"
        native_t2v = spec.family == "wan" and (spec.image_input == "none" or spec.two_experts)
        assert bool(spec.acceleration) == native_t2v, spec.name
        presets = PRESETS.values() if native_t2v else [PRESETS["none"]]
        for options in presets:
            resolve_acceleration(options, supported=spec.acceleration, num_inference_steps=spec.default_steps)


def test_unregistered_folders_offer_no_magcache(tiny_folder, make_request) -> None:
    from engine.engine import Engine

    engine = Engine(tiny_folder, device="cpu")
    with pytest.raises(AccelerationError, match="magcache") as refused:
        engine.check_request(make_request(acceleration={"cache": "magcache", "threshold": 0.1}))
    assert refused.value.param == "acceleration.cache"
    # a preset still runs: its uncalibrated variant (the first-block cache)
    result = engine.generate(make_request(num_inference_steps=STEPS, acceleration="balanced"))
    assert result.acceleration["options"]["cache"] == "fbcache" and result.acceleration["preset"] == "balanced"


def test_a_simulated_schedule_is_the_one_a_run_takes(tiny_engine, make_request) -> None:
    from engine.acceleration.calibration import calibration_for
    from engine.acceleration.step_cache import StepCache

    options = AccelerationOptions(cache="magcache", threshold=0.05, max_consecutive_skips=2)
    simulated = StepCache(options, calibration_for("tiny-wan"), STEPS).simulate([None] * STEPS)
    result = tiny_engine.generate(make_request(num_inference_steps=STEPS, acceleration=options))
    assert simulated == result.acceleration["skipped_steps"] and simulated


def test_generate_command_takes_acceleration_and_summarises_it(tiny_folder, tmp_path, capsys, monkeypatch) -> None:
    import argparse

    from engine.cli import EXIT_OK, EXIT_USAGE, add_generate_arguments, run_generate

    monkeypatch.setenv("VIDQ_MODELS_DIR", str(tiny_folder.parent))
    parser = argparse.ArgumentParser()
    add_generate_arguments(parser)
    common = ["--model", "tiny-wan", "--prompt", "a bird", "--steps", "4", "--device", "cpu"]
    forced = '{"cache": "magcache", "skip_steps": [2]}'
    args = parser.parse_args([*common, "--out", str(tmp_path / "a.mp4"), "--acceleration", forced])
    assert run_generate(args) == EXIT_OK
    assert "acceleration: custom; 3/4 steps computed, 1 skipped; precision float32" in capsys.readouterr().err
    args = parser.parse_args([*common, "--out", str(tmp_path / "b.mp4"), "--acceleration", "ludicrous"])
    assert run_generate(args) == EXIT_USAGE
    assert "unknown acceleration preset 'ludicrous'" in capsys.readouterr().err
