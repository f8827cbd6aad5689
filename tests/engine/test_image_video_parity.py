"""Image-to-video and Wan2.2 against diffusers' pipelines on the same tiny checkpoints.

Same weights, embeddings and noise (CPU, float32): the final latents of each family within 1e-4
relative of WanImageToVideoPipeline (Wan2.1 I2V, Wan2.2 I2V-A14B, Wan2.2 TI2V image-to-video) or
WanPipeline (Wan2.2 T2V-A14B with transformer_2 and boundary_ratio, Wan2.2 TI2V text-to-video).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.engine import Engine
from spec.registry import get_spec
from spec.request import GenerationRequest

PROMPT = "a red car drives through the city at sunset"
NEGATIVE = "blurry, low quality"


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def make_image(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    """A smooth colour gradient with some noise: content a VAE and CLIP both respond to."""
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    noise = np.random.default_rng(seed).random((height, width, 3)) * 0.2
    pixels = np.stack([xx, yy, 1 - xx * yy], axis=-1) * 0.8 + noise
    return Image.fromarray((pixels * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def engines(models_dir: Path):
    cache: dict[str, Engine] = {}

    def get(name: str) -> Engine:
        if name not in cache:
            cache[name] = Engine(name, device="cpu", models_dir=models_dir)
        return cache[name]

    return get


def request_for(name: str, **overrides) -> GenerationRequest:
    spec = get_spec(name)
    fields = dict(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        width=spec.default_width,
        height=spec.default_height,
        num_frames=spec.default_frames,
        num_inference_steps=spec.default_steps,
        guidance_scale=spec.default_guidance,
        guidance_scale_2=spec.default_guidance_2,
        seed=1234,
        fps=spec.default_fps,
        image=make_image() if spec.image_input == "required" else None,
    )
    return GenerationRequest(**{**fields, **overrides})


def diffusers_latents(engine: Engine, request: GenerationRequest) -> torch.Tensor:
    """diffusers' own pipeline on the engine's folder, fed the engine's cached embeddings."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    cls = WanImageToVideoPipeline if request.image is not None else WanPipeline
    pipe = cls.from_pretrained(engine.folder)
    pipe.set_progress_bar_config(disable=True)
    negative = request.negative_prompt if request.do_cfg else None
    prompt_embeds, negative_embeds = engine.pipeline.embedding_cache.get((engine.model_id, request.prompt, negative))
    kwargs = {}
    if request.image is not None:
        kwargs["image"] = request.image
    if request.guidance_scale_2 is not None:
        kwargs["guidance_scale_2"] = request.guidance_scale_2
    return pipe(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds,
        height=request.height,
        width=request.width,
        num_frames=request.num_frames,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(request.seed),
        output_type="latent",
        **kwargs,
    ).frames


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("tiny-wan-i2v", {}),
        ("tiny-wan-i2v", {"width": 96, "height": 64, "num_frames": 13, "guidance_scale": 1.0}),
        ("tiny-wan2.2-ti2v", {}),  # text-to-video: every token at the same timestep
        ("tiny-wan2.2-ti2v", {"image": make_image(96, 72)}),  # image-to-video: clean first frame
        ("tiny-wan2.2-t2v-a14b", {}),
        ("tiny-wan2.2-i2v-a14b", {"num_frames": 13}),
    ],
)
def test_final_latents_match_diffusers(engines, name: str, overrides: dict) -> None:
    engine = engines(name)
    request = request_for(name, **overrides)
    result = engine.generate(request)
    expected = diffusers_latents(engine, request)
    assert result.latents.shape == expected.shape
    assert relative_error(result.latents, expected) < 1e-4


def test_two_experts_each_run_their_steps_with_their_guidance(engines) -> None:
    engine = engines("tiny-wan2.2-t2v-a14b")
    calls: list[str] = []
    for label, expert in (("high", engine.components.transformer), ("low", engine.components.transformer_2)):
        expert.register_forward_hook(lambda *args, label=label: calls.append(label))
    engine.generate(request_for("tiny-wan2.2-t2v-a14b", num_inference_steps=6))
    # boundary 0.875: the high-noise expert first, then the low-noise one, never back
    assert calls == sorted(calls, key=lambda label: label == "low") and set(calls) == {"high", "low"}
    # the low-noise expert's guidance matters
    a = engine.generate(request_for("tiny-wan2.2-t2v-a14b", guidance_scale_2=1.5)).latents
    b = engine.generate(request_for("tiny-wan2.2-t2v-a14b", guidance_scale_2=6.0)).latents
    assert relative_error(a, b) > 1e-3


def test_image_embeddings_match_wan_i2v_pipeline_and_are_cached(engines) -> None:
    from diffusers import WanImageToVideoPipeline

    engine = engines("tiny-wan-i2v")
    image = make_image(80, 56, seed=3)
    encoder_calls: list[int] = []
    hook = engine.components.image_encoder.register_forward_hook(lambda *args: encoder_calls.append(1))
    engine.generate(request_for("tiny-wan-i2v", image=image, num_inference_steps=1))
    engine.generate(request_for("tiny-wan-i2v", image=image.copy(), num_inference_steps=1, seed=5))
    hook.remove()
    assert len(encoder_calls) == 1  # the second request hit the cache (same pixels, new object)
    pipe = WanImageToVideoPipeline.from_pretrained(engine.folder)
    expected = pipe.encode_image(image, torch.device("cpu"))
    from engine.stages.image_encoding import image_digest

    cached = engine.pipeline.image_cache.get((engine.model_id, image_digest(image)))
    assert cached.shape == expected.shape == (1, 17, 24)  # 1 + (32 / 8)^2 CLIP tokens
    assert relative_error(cached, expected) < 1e-5


def test_image_requirements_are_enforced(engines) -> None:
    from spec.registry import SpecViolationError

    with pytest.raises(SpecViolationError) as missing:
        engines("tiny-wan-i2v").generate(request_for("tiny-wan-i2v", image=None))
    assert missing.value.param == "input_reference"
    with pytest.raises(SpecViolationError) as extra:
        engines("tiny-wan2.2-t2v-a14b").generate(request_for("tiny-wan2.2-t2v-a14b", image=make_image()))
    assert extra.value.param == "input_reference"
