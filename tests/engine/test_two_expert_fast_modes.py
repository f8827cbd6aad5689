"""Fast modes on a two-expert model (tiny Wan2.2 T2V-A14B, CPU, float32): the lossless path
untouched, step caches that never carry one expert's residual into the other's steps, FP8 on
both experts against a reference quantize-dequantize, and presets that resolve to what the model
offers (no MagCache: no calibrated schedule exists for A14B)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from engine.engine import Engine
from engine.models.wan_transformer import WanTransformer3DModel
from spec.acceleration import UNCALIBRATED_PRESETS, AccelerationError
from spec.registry import get_spec
from spec.request import GenerationRequest

MODEL = "tiny-wan2.2-t2v-a14b"
STEPS = 10
CACHES = ("teacache", "fbcache")


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


def request(**overrides: object) -> GenerationRequest:
    spec = get_spec(MODEL)
    fields: dict[str, object] = dict(
        prompt="a red car drives through the city at sunset",
        negative_prompt="blurry, low quality",
        width=spec.default_width,
        height=spec.default_height,
        num_frames=spec.default_frames,
        num_inference_steps=STEPS,
        guidance_scale=spec.default_guidance,
        seed=1234,
        fps=spec.default_fps,
    )
    return GenerationRequest(**{**fields, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def engine(models_dir: Path) -> Engine:
    # FP8 emulated so the same engine serves the FP8 tests (lossless requests never touch it)
    return Engine(MODEL, device="cpu", models_dir=models_dir, fp8_emulation=True)


@pytest.fixture(scope="module")
def lossless(engine: Engine):
    return engine.generate(request())


def expert_calls(engine: Engine) -> tuple[dict[str, list[int]], list]:
    """Per expert ("high", "low"), the number of forwards of each block; and the hook handles."""
    calls: dict[str, list[int]] = {}
    handles = []
    for label, expert in zip(("high", "low"), engine.components.transformers, strict=True):
        calls[label] = [0] * len(expert.blocks)
        for index, block in enumerate(expert.blocks):

            def hook(module, args, label=label, index=index):  # type: ignore[no-untyped-def]
                calls[label][index] += 1

            handles.append(block.register_forward_pre_hook(hook))
    return calls, handles


@pytest.fixture(scope="module")
def boundary(engine: Engine) -> int:
    """The first step the low-noise expert runs (the expert switch) at STEPS steps."""
    steps: list[str] = []
    handles = [
        expert.register_forward_pre_hook(lambda *args, label=label: steps.append(label))
        for label, expert in zip(("high", "low"), engine.components.transformers, strict=True)
    ]
    try:
        engine.generate(request(guidance_scale=1.0))  # no CFG: one forward per step
    finally:
        for handle in handles:
            handle.remove()
    switch = steps.index("low")
    assert 2 <= switch <= STEPS - 3, steps  # room for skips on both sides of the switch
    return switch


# -- the lossless path and threshold 0 ----------------------------------------------------------


@pytest.mark.parametrize("value", [None, "none", {"cache": "teacache", "threshold": 0.0}, {"cache": "fbcache"}])
def test_lossless_and_threshold_zero_reproduce_the_plain_output_exactly(engine, lossless, value) -> None:
    result = engine.generate(request(acceleration=value))
    assert torch.equal(result.latents, lossless.latents)
    assert result.acceleration["steps_computed"] == STEPS and result.acceleration["skipped_steps"] == []
    assert all("run_blocks" not in vars(expert) for expert in engine.components.transformers)


# -- skipping across the expert switch ---------------------------------------------------------------


@pytest.mark.parametrize("method", CACHES)
def test_a_forced_schedule_never_skips_the_second_experts_first_step(engine, lossless, boundary, method) -> None:
    named = [1, boundary - 1, boundary, boundary + 1, STEPS - 2]
    calls, handles = expert_calls(engine)
    try:
        result = engine.generate(request(acceleration={"cache": method, "skip_steps": named}))
    finally:
        for handle in handles:
            handle.remove()
    report = result.acceleration
    expected = [step for step in named if step != boundary]  # the new expert has nothing to reuse yet
    assert report["skipped_steps"] == expected
    assert report["steps_computed"] == STEPS - len(expected) and report["steps_skipped"] == len(expected)
    # the last block ran exactly on each expert's computed steps (CFG is one batch: one call a step)
    high_skips = sum(step < boundary for step in expected)
    low_skips = len(expected) - high_skips
    assert calls["high"][-1] == boundary - high_skips
    assert calls["low"][-1] == STEPS - boundary - low_skips
    assert 0 < relative_error(result.latents, lossless.latents) < 0.1


@pytest.mark.parametrize("method", CACHES)
def test_a_cached_residual_never_crosses_the_expert_switch(engine, boundary, method) -> None:
    from engine.acceleration import step_cache

    caches: list[step_cache.StepCache] = []
    original_init = step_cache.StepCache.__init__

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        original_init(self, *args, **kwargs)
        caches.append(self)

    options = {"cache": method, "threshold": 10.0, "warmup_steps": 2, "final_steps": 1, "max_consecutive_skips": 2}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(step_cache.StepCache, "__init__", spy)
        result = engine.generate(request(acceleration=options))
    (cache,) = caches
    report = cache.report
    assert report.segment_starts == [boundary]
    skipped = result.acceleration["skipped_steps"]
    assert skipped == report.skipped_steps and skipped  # a threshold this large skips where allowed
    for step in skipped:
        source = report.reused_from[step]
        assert source in report.computed_steps and source < step
        assert (source >= boundary) == (step >= boundary), f"step {step} reused step {source}'s residual"
    # both experts warm up: their first two steps are computed, as is the last step
    for computed in (0, 1, boundary, boundary + 1, STEPS - 1):
        assert computed in report.computed_steps
    assert any(step > boundary for step in skipped) and any(step < boundary for step in skipped)


# -- FP8 on both experts -------------------------------------------------------------------------------


def fake_quant(t: torch.Tensor) -> torch.Tensor:
    """Symmetric e4m3 quantize-dequantize by the book, one scale per row."""
    scale = t.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 448.0
    return (t / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).float() * scale


def test_fp8_emulation_on_both_experts_matches_a_reference_quantize_dequantize(engine, lossless) -> None:
    fp8 = engine.generate(request(acceleration={"fp8": True}))
    assert fp8.acceleration["precision"] == "fp8-emulated"
    experts = engine.components.transformers
    per_expert = [sum(isinstance(m, nn.Linear) for m in expert.blocks.modules()) for expert in experts]
    assert len(engine.fp8_weights.linears) == sum(per_expert)  # every block linear of both experts

    # The reference: the plain path with every block linear of both experts computing
    # fake_quant(x) @ fake_quant(W).T + b (per-token activations, per-channel weights).
    def reference_forward(linear: nn.Linear):  # type: ignore[no-untyped-def]
        def forward(x: torch.Tensor) -> torch.Tensor:
            rows = fake_quant(x.reshape(-1, x.shape[-1])) @ fake_quant(linear.weight).t() + linear.bias
            return rows.view(*x.shape[:-1], linear.out_features).to(x.dtype)

        return forward

    linears = [m for expert in experts for m in expert.blocks.modules() if isinstance(m, nn.Linear)]
    for linear in linears:
        linear.forward = reference_forward(linear)
    try:
        reference = engine.generate(request())
    finally:
        for linear in linears:
            del linear.forward
    torch.testing.assert_close(fp8.latents, reference.latents, rtol=1e-5, atol=1e-5)
    assert 0 < relative_error(fp8.latents, lossless.latents) < 0.1
    assert torch.equal(engine.generate(request()).latents, lossless.latents)  # FP8 switched off again


def test_the_fp8_memory_check_counts_both_experts(engine, models_dir) -> None:
    from engine.acceleration.fp8 import fp8_extra_bytes

    one_expert = fp8_extra_bytes(engine.components.transformer)
    assert fp8_extra_bytes(*engine.components.transformers) == 2 * one_expert
    # a budget with room for one expert's FP8 copies beside the plan, not for both
    budget_gb = (engine.placement.estimated_peak_bytes + 1.5 * one_expert) / 2**30
    tight = Engine(MODEL, device="cpu", models_dir=models_dir, fp8_emulation=True, vram_budget_gb=budget_gb)
    assert tight.placement.experts == "resident" and tight.placement.offload == "none"
    with pytest.raises(AccelerationError, match="do not fit") as refused:
        tight.generate(request(acceleration={"fp8": True}))
    assert refused.value.param == "acceleration.fp8"


def test_fp8_is_refused_when_the_experts_swap(models_dir) -> None:
    swapping = Engine(MODEL, device="cpu", models_dir=models_dir, fp8_emulation=True, offload="model")
    with pytest.raises(AccelerationError, match="resident") as refused:
        swapping.generate(request(acceleration={"fp8": True}))
    assert refused.value.param == "acceleration.fp8"


# -- presets and the registry ----------------------------------------------------------------------


def test_presets_resolve_to_the_first_block_cache_and_magcache_is_refused(engine, lossless) -> None:
    assert "magcache" not in get_spec(MODEL).acceleration and "magcache" not in get_spec("wan2.2-t2v-a14b").acceleration
    with pytest.raises(AccelerationError, match="magcache") as refused:
        engine.generate(request(acceleration={"cache": "magcache", "threshold": 0.1}))
    assert refused.value.param == "acceleration.cache"
    for name in ("balanced", "fast"):
        result = engine.generate(request(acceleration=name))
        report = result.acceleration
        assert report["preset"] == name and report["options"] == UNCALIBRATED_PRESETS[name].to_dict()
        assert report["precision"] == ("fp8-emulated" if name == "fast" else "float32")
        assert report["steps_computed"] + report["steps_skipped"] == STEPS
        assert relative_error(result.latents, lossless.latents) < 0.1


def test_the_step_cache_hook_wraps_each_expert_once_and_leaves_nothing() -> None:
    from engine.acceleration.calibration import StepCacheCalibration
    from engine.acceleration.step_cache import StepCache
    from engine.models.tiny import TINY_TRANSFORMER
    from spec.acceleration import AccelerationOptions

    experts = [WanTransformer3DModel(TINY_TRANSFORMER) for _ in range(2)]
    cache = StepCache(AccelerationOptions(cache="fbcache", threshold=0.1), StepCacheCalibration(), 4)
    with cache.attached(*experts):
        assert all("run_blocks" in vars(expert) for expert in experts)
        with pytest.raises(RuntimeError, match="already attached"), cache.attached(experts[1]):
            pass
    assert all("run_blocks" not in vars(expert) for expert in experts)


def test_the_image_to_video_pair_runs_the_fast_preset(models_dir) -> None:
    from PIL import Image

    name = "tiny-wan2.2-i2v-a14b"
    spec = get_spec(name)
    i2v = Engine(name, device="cpu", models_dir=models_dir, fp8_emulation=True)
    image = Image.new("RGB", (spec.default_width, spec.default_height), (200, 80, 40))
    result = i2v.generate(
        request(num_frames=13, guidance_scale_2=spec.default_guidance_2, image=image, acceleration="fast")
    )
    report = result.acceleration
    assert report["options"]["cache"] == "fbcache" and report["precision"] == "fp8-emulated"
    assert report["steps_computed"] + report["steps_skipped"] == STEPS
