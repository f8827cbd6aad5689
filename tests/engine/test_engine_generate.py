"""Engine.generate: callbacks, cancellation, the embedding cache, validation, outputs."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.stages.base import Stage, StageContractError
from engine.stages.state import PipelineState
from spec.registry import SpecViolationError


class Cancelled(Exception):
    pass


def test_on_step_called_once_per_step_in_order(tiny_engine, make_request) -> None:
    seen = []
    request = make_request(num_inference_steps=5)
    result = tiny_engine.generate(request, on_step=seen.append)
    assert [info.step for info in seen] == [1, 2, 3, 4, 5]
    assert {info.total for info in seen} == {5}
    assert all(a.elapsed_s <= b.elapsed_s for a, b in itertools.pairwise(seen))
    assert seen[-1].latents.shape == result.latents.shape == (1, 16, 3, 8, 8)
    torch.testing.assert_close(seen[-1].latents, result.latents)


def test_exception_from_on_step_stops_after_that_step(tiny_engine, make_request) -> None:
    steps, stages = [], []

    def cancel_at_two(info) -> None:
        steps.append(info.step)
        if info.step == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        tiny_engine.generate(make_request(), on_step=cancel_at_two, on_stage=stages.append)
    assert steps == [1, 2]
    assert stages == ["text_encoding", "denoising"]  # decoding never started


def test_stage_names_and_timings(tiny_engine, make_request, tmp_path: Path) -> None:
    stages = []
    result = tiny_engine.generate(make_request(), on_stage=stages.append, output_path=tmp_path / "v.mp4")
    assert stages == ["text_encoding", "denoising", "decoding", "encoding"]
    assert set(result.stage_timings_s) == {"text_encoding", "latent_preparation", "denoising", "decoding", "encoding"}
    assert all(seconds >= 0 for seconds in result.stage_timings_s.values())
    assert result.peak_memory_bytes is None  # CPU
    assert result.video_path == tmp_path / "v.mp4" and result.video_path.stat().st_size > 0
    assert result.thumbnail_path == tmp_path / "v.jpg" and result.thumbnail_path.exists()


def test_without_output_path_nothing_is_encoded(tiny_engine, make_request) -> None:
    stages = []
    result = tiny_engine.generate(make_request(), on_stage=stages.append)
    assert "encoding" not in stages and result.video_path is None
    assert result.frames.dtype == np.uint8 and result.frames.shape == (9, 64, 64, 3)


def test_same_seed_same_video_other_seed_other_video(tiny_engine, make_request) -> None:
    first = tiny_engine.generate(make_request(seed=5))
    again = tiny_engine.generate(make_request(seed=5))
    other = tiny_engine.generate(make_request(seed=6))
    assert first.seed == 5
    assert np.array_equal(first.frames, again.frames)
    assert not torch.equal(first.latents, other.latents)


def test_repeated_prompt_skips_the_text_encoder(tiny_engine, make_request) -> None:
    calls = []
    hook = tiny_engine.components.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        request = make_request(prompt="a horse swims across a bridge, unique prompt for the cache test")
        tiny_engine.generate(request)
        assert len(calls) == 1  # prompt and negative prompt share one encoder batch
        tiny_engine.generate(make_request(prompt=request.prompt, seed=77))
        assert len(calls) == 1
        tiny_engine.generate(make_request(prompt=request.prompt, negative_prompt="something else"))
        assert len(calls) == 2
    finally:
        hook.remove()


def test_prompt_changes_the_video(tiny_engine, make_request) -> None:
    a = tiny_engine.generate(make_request(prompt="a dog sleeps in the snow"))
    b = tiny_engine.generate(make_request(prompt="a robot dances in space"))
    assert not torch.equal(a.latents, b.latents)


@pytest.mark.parametrize(
    ("override", "param"),
    [({"width": 832, "height": 480}, "size"), ({"num_frames": 8}, "num_frames"), ({"prompt": ""}, "prompt")],
)
def test_invalid_request_rejected_before_any_stage(tiny_engine, make_request, override, param) -> None:
    stages = []
    with pytest.raises(SpecViolationError) as info:
        tiny_engine.generate(make_request(**override), on_stage=stages.append)
    assert info.value.param == param
    assert stages == []


def test_stage_checks_its_declared_inputs(make_request) -> None:
    class NeedsLatents(Stage):
        name = "needs_latents"
        requires = ("latents",)
        provides = ("frames",)

        def forward(self, state: PipelineState) -> None:
            state.frames = np.zeros((1, 1, 1, 3), np.uint8)

    class ForgetsOutput(NeedsLatents):
        def forward(self, state: PipelineState) -> None:
            pass

    state = PipelineState(request=make_request())
    with pytest.raises(StageContractError, match="missing inputs"):
        NeedsLatents(torch.device("cpu"))(state)
    state.latents = torch.zeros(1)
    with pytest.raises(StageContractError, match="did not set"):
        ForgetsOutput(torch.device("cpu"))(state)
    NeedsLatents(torch.device("cpu"))(state)
    assert "needs_latents" in state.stage_timings_s
