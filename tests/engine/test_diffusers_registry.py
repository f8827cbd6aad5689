"""Registry entries of the families served through diffusers: frame rules, sizes, image inputs."""

from __future__ import annotations

import pytest

from spec.registry import SpecViolationError, get_spec, list_specs

VALID = dict(num_inference_steps=30, guidance_scale=5.0, fps=24, prompt="a cat")


@pytest.mark.parametrize(
    ("name", "frame_step", "first", "last", "default"),
    [
        ("ltx-video", 8, 9, 257, 161),
        ("cogvideox-5b", 4, 9, 49, 49),
        ("mochi-1", 6, 7, 163, 85),
        ("hunyuanvideo", 4, 5, 129, 129),
    ],
)
def test_frame_rule_follows_the_vae(name: str, frame_step: int, first: int, last: int, default: int) -> None:
    spec = get_spec(name)
    allowed = spec.allowed_frames()
    assert (allowed[0], allowed[-1], spec.default_frames) == (first, last, default)
    assert all((n - 1) % frame_step == 0 for n in allowed)
    assert not spec.frames_allowed(default + 1)
    with pytest.raises(SpecViolationError) as info:
        spec.validate(width=spec.default_width, height=spec.default_height, num_frames=default + 1, **VALID)
    assert info.value.param == "num_frames" and f"{frame_step}k+1" in info.value.message


def test_published_defaults() -> None:
    ltx, cog, mochi, hunyuan = (get_spec(n) for n in ("ltx-video", "cogvideox-2b", "mochi-1", "hunyuanvideo"))
    assert (ltx.default_size, ltx.default_fps, ltx.default_guidance, ltx.size_multiple) == ("704x512", 25, 3.0, 32)
    assert (cog.default_size, cog.default_fps, cog.default_guidance, cog.default_steps) == ("720x480", 8, 6.0, 50)
    assert (mochi.default_size, mochi.default_fps, mochi.default_steps, mochi.default_guidance) == (
        "848x480",
        30,
        64,
        4.5,
    )
    assert (hunyuan.default_size, hunyuan.default_fps, hunyuan.hub_id) == (
        "1280x720",
        24,
        "hunyuanvideo-community/HunyuanVideo",
    )


def test_image_rules() -> None:
    base = dict(width=720, height=480, num_frames=49, **VALID)
    get_spec("cogvideox-5b-i2v").validate(**base, has_image=True)
    with pytest.raises(SpecViolationError) as needs:
        get_spec("cogvideox-5b-i2v").validate(**base, has_image=False)
    assert needs.value.param == "input_reference"
    with pytest.raises(SpecViolationError) as refuses:
        get_spec("cogvideox-5b").validate(**base, has_image=True)
    assert refuses.value.param == "input_reference"
    get_spec("cogvideox-5b").validate(**base)  # has_image unknown: the rule is left to the caller
    ltx = get_spec("ltx-video")
    for has_image in (True, False):  # text- and image-to-video from one checkpoint
        ltx.validate(width=704, height=512, num_frames=161, **VALID, has_image=has_image)


def test_every_family_has_a_tiny_checkpoint() -> None:
    from engine.models.locate import TINY_DIFFUSERS_NAMES
    from engine.models.tiny_diffusers import TINY_WRITERS

    assert set(TINY_DIFFUSERS_NAMES) == set(TINY_WRITERS)
    families = {spec.family for spec in list_specs()}
    assert {get_spec(name).family for name in TINY_WRITERS} | {"wan"} == families


@pytest.mark.parametrize(
    "name", ["ltx-video", "cogvideox-2b", "cogvideox-5b", "cogvideox-5b-i2v", "mochi-1", "hunyuanvideo"]
)
def test_planner_footprints_are_the_published_configs(name: str) -> None:
    import torch

    from engine.memory.diffusers_footprint import diffusers_footprint_from_modules
    from engine.models.diffusers_configs import PUBLISHED, build

    with torch.device("meta"):
        transformer, vae = build(name, "transformer"), build(name, "vae")
        encoders = [build(name, "text_encoder", i) for i in range(len(PUBLISHED[name].text_encoders))]
    assert get_spec(name).footprint == diffusers_footprint_from_modules(transformer, vae, encoders, torch.bfloat16)


def test_planner_offloads_or_refuses_the_big_models() -> None:
    from spec.memory import GIB, MemoryBudgetError, RequestShape, plan_memory

    hunyuan = get_spec("hunyuanvideo")
    shape = RequestShape(hunyuan.default_width, hunyuan.default_height, hunyuan.default_frames, cfg=True)
    footprint = hunyuan.footprint
    assert plan_memory(footprint, shape, 140 * GIB).offload == "none"  # an H200 holds it all
    assert plan_memory(footprint, shape, 40 * GIB).offload in ("model", "layerwise")  # 13B DiT + 8B Llama do not
    with pytest.raises(MemoryBudgetError):
        plan_memory(footprint, shape, 4 * GIB)
    small = RequestShape(704, 512, 161, cfg=True)
    ltx = get_spec("ltx-video").footprint
    assert plan_memory(ltx, small, 24 * GIB).offload == "none"  # T5-XXL (9.1 GiB) + the 2B DiT (3.6 GiB)
    assert plan_memory(ltx, small, 12 * GIB).offload == "model"


def test_cogvideox_image_to_video_serves_only_its_sample_size() -> None:
    """5B-I2V's learned position embeddings are built for 720x480 (the tiny one for 64x64): diffusers
    refuses other sizes mid-render, so the registry refuses them at submission."""
    assert get_spec("cogvideox-5b-i2v").sizes == ("720x480",)
    assert get_spec("tiny-cogvideox-i2v").sizes == ("64x64",)
