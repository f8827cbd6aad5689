"""A full tiny generation against diffusers' WanPipeline on the same checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


@pytest.fixture(scope="module")
def diffusers_pipe(tiny_folder):
    """diffusers' own WanPipeline, loading the tiny folder (its transformer with diffusers' class)."""
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_diffusers(pipe, request, prompt_embeds, negative_prompt_embeds, output_type: str):
    return pipe(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_prompt_embeds,
        height=request.height,
        width=request.width,
        num_frames=request.num_frames,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(request.seed),
        output_type=output_type,
    ).frames


def cached_embeddings(engine, request):
    negative = request.negative_prompt if request.do_cfg else None
    return engine.pipeline.embedding_cache.get((engine.model_id, request.prompt, negative))


def test_text_embeddings_match_wan_pipeline(tiny_engine, diffusers_pipe, make_request) -> None:
    request = make_request(prompt="  a cat &amp;  a   dog\nplay in the snow ", negative_prompt="ugly, blurry")
    tiny_engine.generate(request)
    prompt_embeds, negative_embeds = cached_embeddings(tiny_engine, request)
    expected, expected_negative = diffusers_pipe.encode_prompt(
        request.prompt, request.negative_prompt, max_sequence_length=512, device=torch.device("cpu")
    )
    assert prompt_embeds.shape == expected.shape == (1, 512, 32)
    assert relative_error(prompt_embeds, expected) < 1e-5
    assert relative_error(negative_embeds, expected_negative) < 1e-5
    # positions past the prompt's tokens are exactly zero, as WanPipeline pads them
    assert torch.count_nonzero(prompt_embeds[0, 64:]) == 0


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # CFG 5.0, 64x64, 9 frames, 4 steps
        {"width": 96, "height": 64, "num_frames": 13, "num_inference_steps": 6, "seed": 7},
        {"guidance_scale": 1.0},  # no CFG: one pass per step
    ],
)
def test_final_latents_match_wan_pipeline(tiny_engine, diffusers_pipe, make_request, overrides) -> None:
    request = make_request(**overrides)
    result = tiny_engine.generate(request)
    prompt_embeds, negative_embeds = cached_embeddings(tiny_engine, request)
    expected = run_diffusers(diffusers_pipe, request, prompt_embeds, negative_embeds, "latent")
    assert result.latents.shape == expected.shape
    assert relative_error(result.latents, expected) < 1e-4


def test_decoded_frames_match_wan_pipeline(tiny_engine, diffusers_pipe, make_request) -> None:
    request = make_request(seed=99)
    result = tiny_engine.generate(request)
    prompt_embeds, negative_embeds = cached_embeddings(tiny_engine, request)
    expected = run_diffusers(diffusers_pipe, request, prompt_embeds, negative_embeds, "np")[0]  # [F,H,W,3] in [0,1]
    assert result.frames.dtype == np.uint8
    assert result.frames.shape == expected.shape == (9, 64, 64, 3)
    # ours rounds to uint8, theirs is float: at most half a level apart (plus float noise)
    assert np.abs(result.frames.astype(np.float32) - expected * 255).max() <= 0.51
