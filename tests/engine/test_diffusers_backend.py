"""The diffusers backend on each family's tiny checkpoint, CPU, float32.

The backend runs the family's own diffusers pipeline split into vidq stages; these tests hold it to
"the same output as one plain pipeline call with the same seed" (bit for bit: it is the same code
on the same generator), to per-step progress in order, and to a cancel that stops the loop at the
step where it was raised.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spec.registry import SpecViolationError, get_spec

FAMILY_MODELS = ("tiny-ltx-video", "tiny-cogvideox", "tiny-cogvideox-i2v", "tiny-mochi", "tiny-hunyuanvideo")
STEPS = 2


class Cancelled(Exception):
    pass


@pytest.fixture(scope="module")
def engines(models_dir: Path):
    """One warm engine per tiny model, built on first use (the first use also writes the checkpoint)."""
    from engine.engine import Engine

    built: dict[tuple[str, str], Engine] = {}

    def get(name: str, offload: str = "none", vae_tiling: str = "off") -> Engine:
        key = (name, offload, vae_tiling)
        if key not in built:
            built[key] = Engine(name, device="cpu", models_dir=models_dir, offload=offload, vae_tiling=vae_tiling)
        return built[key]

    return get


def input_image() -> Image.Image:
    """A deterministic 80x48 gradient (a different size from the video: the pipeline resizes it)."""
    ramp = np.linspace(0, 255, 80, dtype=np.float32)
    rgb = np.stack([np.tile(ramp, (48, 1)), np.tile(ramp[::-1], (48, 1)), np.full((48, 80), 90.0)], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


def request_for(name: str, *, image: bool = False, steps: int = STEPS, seed: int = 11):
    from spec.request import GenerationRequest

    spec = get_spec(name)
    return GenerationRequest(
        prompt="a red car drives through the city at sunset",
        negative_prompt="blurry, low quality",
        width=spec.default_width,
        height=spec.default_height,
        num_frames=spec.default_frames,
        num_inference_steps=steps,
        guidance_scale=spec.default_guidance,
        seed=seed,
        fps=spec.default_fps,
        image=input_image() if image or spec.image_input == "required" else None,
    )


def plain_diffusers_frames(engine, request) -> np.ndarray:
    """One ordinary call of a plain diffusers pipeline loaded from the same folder (a separate
    object: none of the engine's settings, e.g. fused projections, apply), frames as uint8 [F, H, W, 3]."""
    import diffusers

    from engine.models.diffusers_loading import checkpoint_class
    from engine.pipelines.diffusers_families import LTX_DECODE_NOISE_SCALE, LTX_DECODE_TIMESTEP

    family = engine.family
    pipe = getattr(diffusers, checkpoint_class(engine.folder)).from_pretrained(engine.folder)
    wanted = family.pipeline_class(request.image is not None)
    if type(pipe).__name__ != wanted:
        pipe = getattr(diffusers, wanted).from_pipe(pipe)
    kwargs = {
        "prompt": request.prompt,
        "height": request.height,
        "width": request.width,
        "num_frames": request.num_frames,
        "num_inference_steps": request.num_inference_steps,
        "guidance_scale": request.guidance_scale,
        "generator": torch.Generator("cpu").manual_seed(request.seed),
        "output_type": "np",
        **family.call_kwargs(request),
    }
    if family.uses_negative_prompt:
        kwargs["negative_prompt"] = request.negative_prompt
    if request.image is not None:
        kwargs["image"] = request.image
    if family.name == "ltx":
        kwargs |= {"decode_timestep": LTX_DECODE_TIMESTEP, "decode_noise_scale": LTX_DECODE_NOISE_SCALE}
    video = pipe(**kwargs).frames[0]  # float [F, H, W, 3] in [0, 1]
    return np.round(video * 255).astype(np.uint8)


CASES = [(name, False) for name in FAMILY_MODELS] + [("tiny-ltx-video", True)]  # LTX: I2V from the same weights


@pytest.mark.parametrize(("name", "with_image"), CASES, ids=[f"{n}{'-image' if i else ''}" for n, i in CASES])
def test_output_equals_plain_diffusers_and_every_step_is_reported(engines, name: str, with_image: bool) -> None:
    engine = engines(name)
    request = request_for(name, image=with_image)
    steps, stages = [], []
    result = engine.generate(request, on_step=steps.append, on_stage=stages.append)

    assert stages == ["text_encoding", "denoising", "decoding"]
    assert [info.step for info in steps] == list(range(1, STEPS + 1))
    assert {info.total for info in steps} == {STEPS}
    assert all(a.elapsed_s <= b.elapsed_s for a, b in itertools.pairwise(steps))
    torch.testing.assert_close(steps[-1].latents, result.latents)
    assert set(result.stage_timings_s) == {"text_encoding", "denoising", "decoding"}
    assert result.frames.dtype == np.uint8
    assert result.frames.shape == (request.num_frames, request.height, request.width, 3)

    expected = plain_diffusers_frames(engine, request)
    np.testing.assert_array_equal(result.frames, expected)


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_cancel_stops_within_one_step(engines, name: str) -> None:
    engine = engines(name)
    transformer_calls = []
    hook = engine.pipeline.pipe.transformer.register_forward_hook(lambda *args: transformer_calls.append(1))
    steps, stages = [], []

    def cancel_at_first(info) -> None:
        steps.append(info.step)
        raise Cancelled

    try:
        with pytest.raises(Cancelled):
            engine.generate(request_for(name, steps=4), on_step=cancel_at_first, on_stage=stages.append)
    finally:
        hook.remove()
    assert steps == [1]
    assert stages == ["text_encoding", "denoising"]  # decoding never started
    # One transformer call per step (CFG runs as one batch, or HunyuanVideo has none): no second step ran.
    assert len(transformer_calls) == 1


def test_seed_and_negative_prompt_change_the_video(engines) -> None:
    from dataclasses import replace

    engine = engines("tiny-ltx-video")
    base = request_for("tiny-ltx-video")
    frames = engine.generate(base).frames
    assert not np.array_equal(frames, engine.generate(replace(base, seed=base.seed + 1)).frames)
    assert not np.array_equal(frames, engine.generate(replace(base, negative_prompt="a dog")).frames)
    np.testing.assert_array_equal(frames, engine.generate(base).frames)  # and the same seed repeats


@pytest.mark.parametrize("offload", ["model", "layerwise"])
def test_offloaded_placements_give_the_resident_output(engines, offload: str) -> None:
    request = request_for("tiny-ltx-video")
    resident = engines("tiny-ltx-video").generate(request)
    engine = engines("tiny-ltx-video", offload=offload)
    assert engine.placement.offload == offload
    offloaded = engine.generate(request)
    # Same weights and code; only where the weights live differs (flat host buffers move float32
    # rounding in the last bit), so the latents agree to float32 precision and frames within 1/255.
    torch.testing.assert_close(offloaded.latents, resident.latents)
    assert np.abs(offloaded.frames.astype(int) - resident.frames.astype(int)).max() <= 1


def test_tiled_decode_follows_the_memory_plan(engines) -> None:
    engine = engines("tiny-hunyuanvideo", vae_tiling="on")
    request = request_for("tiny-hunyuanvideo")
    result = engine.generate(request)
    assert result.memory_plan.vae_tiling and engine.pipeline.pipe.vae.use_tiling
    assert result.frames.shape == (request.num_frames, request.height, request.width, 3)


def test_writes_mp4_and_thumbnail(engines, tmp_path: Path) -> None:
    stages = []
    result = engines("tiny-mochi").generate(
        request_for("tiny-mochi"), on_stage=stages.append, output_path=tmp_path / "m.mp4"
    )
    assert stages[-1] == "encoding"
    assert result.video_path.stat().st_size > 0 and result.thumbnail_path.exists()


def test_image_rules_are_checked_before_any_work(engines) -> None:
    from dataclasses import replace

    with pytest.raises(SpecViolationError) as needs:
        engines("tiny-cogvideox-i2v").generate(replace(request_for("tiny-cogvideox-i2v"), image=None))
    assert needs.value.param == "input_reference"
    with pytest.raises(SpecViolationError) as refuses:
        engines("tiny-mochi").generate(replace(request_for("tiny-mochi"), image=input_image()))
    assert refuses.value.param == "input_reference"


def test_footprint_counts_the_loaded_weights(engines) -> None:
    engine = engines("tiny-hunyuanvideo")
    pipe = engine.pipeline.pipe
    footprint = engine.footprint

    def nbytes(module: torch.nn.Module) -> int:
        return sum(p.numel() * p.element_size() for p in module.state_dict().values())

    # Blocks of two sizes are counted as equal blocks, rounded up: at most one element per block over.
    assert 0 <= footprint.dit_bytes - nbytes(pipe.transformer) < footprint.dit_num_blocks * 4
    assert footprint.dit_num_blocks == 2  # one dual-stream and one single-stream block
    assert footprint.text_encoder_bytes == nbytes(pipe.text_encoder) + nbytes(pipe.text_encoder_2)
    assert footprint.vae_bytes == nbytes(pipe.vae)
    assert (footprint.vae_temporal_factor, footprint.vae_spatial_factor) == (4, 8)


def test_fused_projections_change_nothing(engines) -> None:
    """CogVideoX's q/k/v run as one GEMM in the engine (VIDQ_FUSE_PROJECTIONS); the parity test above
    compares against an unfused pipeline, and this checks the fusion really happened."""
    from diffusers.models.attention_processor import FusedCogVideoXAttnProcessor2_0

    processors = engines("tiny-cogvideox").pipeline.pipe.transformer.attn_processors.values()
    assert processors and all(isinstance(p, FusedCogVideoXAttnProcessor2_0) for p in processors)


def test_warm_up_runs_once_per_shape_and_leaves_the_output_alone(engines) -> None:
    """With compiled blocks (CUDA) the first request of a shape runs a throwaway warm-up first; its
    time is the "compile" timing, its steps are not reported, and the request's noise is its own."""
    from dataclasses import replace

    engine = engines("tiny-ltx-video")
    stage = engine.pipeline.stage("denoising")
    request = request_for("tiny-ltx-video")
    cold = engine.generate(request)
    stage.warm_up = True
    try:
        steps = []
        first = engine.generate(request, on_step=steps.append)
        again = engine.generate(request)
        other_shape = engine.generate(replace(request, num_frames=17))
    finally:
        stage.warm_up = False
    assert [info.step for info in steps] == list(range(1, STEPS + 1))
    assert "compile" in first.stage_timings_s and "compile" not in again.stage_timings_s
    assert "compile" in other_shape.stage_timings_s
    np.testing.assert_array_equal(first.frames, cold.frames)
