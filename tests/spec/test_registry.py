"""The registry's rules, and that importing it stays cheap for the API."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict

import pytest

from spec.registry import (
    MAX_STEPS,
    ModelSpec,
    SpecViolationError,
    UnknownModelError,
    find_spec,
    format_seconds,
    get_spec,
    list_specs,
    parse_size,
)


def test_registry_import_does_not_import_torch() -> None:
    code = (
        "import sys, spec.registry, spec.request, engine.cli, engine;"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'numpy') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_lazy_engine_attributes_resolve() -> None:
    import engine

    assert engine.GenerationRequest.__name__ == "GenerationRequest"
    with pytest.raises(AttributeError):
        _ = engine.NoSuchThing


@pytest.mark.parametrize(
    ("frames", "allowed"),
    [(5, True), (9, True), (33, True), (37, False), (1, False), (8, False), (10, False), (0, False)],
)
def test_tiny_frames_rule(frames: int, allowed: bool) -> None:
    assert get_spec("tiny-wan").frames_allowed(frames) is allowed


def test_wan_frame_range_is_4k_plus_1_up_to_81() -> None:
    spec = get_spec("wan2.1-t2v-1.3b")
    assert spec.allowed_frames()[-1] == 81
    assert all((n - 1) % 4 == 0 for n in spec.allowed_frames())
    assert not spec.frames_allowed(82)


def test_specs_have_expected_sizes_and_defaults() -> None:
    small, large = get_spec("wan2.1-t2v-1.3b"), get_spec("wan2.1-t2v-14b")
    assert small.sizes == ("832x480", "480x832", "1280x720", "720x1280")
    assert small.hub_id == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert (small.default_steps, small.default_guidance, small.default_fps, small.flow_shift) == (50, 5.0, 16, 3.0)
    assert "1280x720" in large.sizes and "720x1280" in large.sizes
    assert large.flow_shift == 5.0
    assert get_spec("tiny-wan").default_size == "64x64"
    assert [s.name for s in list_specs()][:3] == ["tiny-wan", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b"]


def test_image_and_wan22_specs_follow_the_published_configs() -> None:
    i2v, ti2v = get_spec("wan2.1-i2v-14b-480p"), get_spec("wan2.2-ti2v-5b")
    t2v_moe, i2v_moe = get_spec("wan2.2-t2v-a14b"), get_spec("wan2.2-i2v-a14b")
    assert (i2v.image_input, i2v.default_size, i2v.default_frames, i2v.default_fps) == ("required", "832x480", 81, 16)
    assert get_spec("wan2.1-i2v-14b-720p").default_size == "1280x720"
    assert (ti2v.image_input, ti2v.sizes, ti2v.default_frames, ti2v.default_fps) == (
        "optional",
        ("1280x704", "704x1280"),
        121,
        24,
    )
    assert (ti2v.default_steps, ti2v.default_guidance, ti2v.flow_shift, ti2v.size_multiple) == (50, 5.0, 5.0, 32)
    assert (t2v_moe.default_guidance, t2v_moe.default_guidance_2, t2v_moe.flow_shift, t2v_moe.image_input) == (
        4.0,
        3.0,
        12.0,
        "none",
    )
    assert (i2v_moe.default_guidance, i2v_moe.default_guidance_2, i2v_moe.flow_shift) == (3.5, 3.5, 5.0)
    assert t2v_moe.two_experts and not ti2v.two_experts


def test_image_input_rules_name_input_reference() -> None:
    base = dict(width=64, height=64, num_frames=9, num_inference_steps=4, guidance_scale=5.0, fps=8, prompt="a cat")
    with pytest.raises(SpecViolationError) as missing:
        get_spec("tiny-wan-i2v").validate(**base, has_image=False)
    assert missing.value.param == "input_reference" and "image" in missing.value.message
    with pytest.raises(SpecViolationError) as extra:
        get_spec("tiny-wan").validate(**base, has_image=True)
    assert extra.value.param == "input_reference"
    get_spec("tiny-wan2.2-ti2v").validate(**base)  # optional: both ways
    get_spec("tiny-wan2.2-ti2v").validate(**base, has_image=True)
    with pytest.raises(SpecViolationError) as second:
        get_spec("tiny-wan").validate(**base, guidance_scale_2=3.0)
    assert second.value.param == "guidance_scale_2"
    get_spec("tiny-wan2.2-t2v-a14b").validate(**base, guidance_scale_2=3.0)


def test_wan22_vae_sizes_are_multiples_of_32() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        ModelSpec(**{**asdict(get_spec("wan2.2-ti2v-5b")), "sizes": ("1280x720",), "default_size": "1280x720"})


def test_unknown_model_is_a_key_error() -> None:
    with pytest.raises(KeyError) as info:
        get_spec("sora")
    assert isinstance(info.value, UnknownModelError)
    assert "tiny-wan" in str(info.value)


def test_find_spec_by_hub_id() -> None:
    assert find_spec("Wan-AI/Wan2.1-T2V-14B-Diffusers").name == "wan2.1-t2v-14b"
    assert find_spec("someone/else") is None


def test_parse_size() -> None:
    assert parse_size("832x480") == (832, 480)
    with pytest.raises(ValueError):
        parse_size("832*480")


VALID = dict(width=64, height=64, num_frames=9, num_inference_steps=4, guidance_scale=5.0, fps=8, prompt="a cat")


@pytest.mark.parametrize(
    ("override", "param"),
    [
        ({"width": 128}, "size"),
        ({"num_frames": 10}, "num_frames"),
        ({"num_frames": 37}, "num_frames"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": MAX_STEPS + 1}, "num_inference_steps"),
        ({"guidance_scale": 25.0}, "guidance_scale"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"fps": 0}, "fps"),
    ],
)
def test_validate_names_the_bad_parameter(override: dict, param: str) -> None:
    spec = get_spec("tiny-wan")
    spec.validate(**VALID)  # the baseline is accepted
    with pytest.raises(SpecViolationError) as info:
        spec.validate(**{**VALID, **override})
    assert info.value.param == param


def test_each_model_lists_the_openai_sizes_it_serves() -> None:
    assert get_spec("wan2.1-t2v-14b").openai_sizes == ("720x1280", "1280x720")
    assert get_spec("wan2.1-t2v-1.3b").openai_sizes == ("720x1280", "1280x720")
    assert get_spec("tiny-wan").openai_sizes == ()


def test_seconds_map_to_the_nearest_allowed_frame_count() -> None:
    wan = get_spec("wan2.1-t2v-1.3b")  # 5..81 frames, 4k+1
    assert wan.frames_for_seconds(4, 16) == 65  # 64 frames asked: 65 is the nearest 4k+1
    assert wan.frames_for_seconds(5, 16) == 81  # 80 -> 81
    assert wan.frames_for_seconds(2.5, 16) == 41
    assert wan.frames_for_seconds(0.3, 16) == 5  # 4.8 frames: within half a step of the minimum
    tiny = get_spec("tiny-wan")  # 5..33 frames
    assert tiny.frames_for_seconds(1.125, 8) == 9


@pytest.mark.parametrize("seconds", [8, 12, 0.1, 0, -1, float("nan")])
def test_seconds_outside_the_models_range_are_refused_naming_seconds(seconds: float) -> None:
    with pytest.raises(SpecViolationError) as info:
        get_spec("wan2.1-t2v-1.3b").frames_for_seconds(seconds, 16)
    assert info.value.param == "seconds"


def test_seconds_are_written_like_openai_does() -> None:
    assert format_seconds(64, 16) == "4"
    assert format_seconds(65, 16) == "4.062"
    assert format_seconds(9, 8) == "1.125"
