"""LoRA adapters on a two-expert model (tiny Wan2.2 T2V-A14B, CPU, float32): one adapter goes into
both experts, a high-noise/low-noise pair each into its own, and either equals a checkpoint whose
experts had the adapters merged into their weights by hand (plain safetensors arithmetic, no
engine code), in every way the engine applies them."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.engine import Engine
from engine.lora.synthetic import random_adapter, write_adapter
from engine.models.tiny import TINY_TRANSFORMER
from spec.lora_keys import DiTShape
from spec.registry import get_spec
from spec.request import HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT, GenerationRequest, LoraRef
from spec.settings import EngineSettings

MODEL = "tiny-wan2.2-t2v-a14b"
WEIGHTS = "diffusion_pytorch_model.safetensors"
TINY_DIT = DiTShape.from_config(TINY_TRANSFORMER.to_dict())


def request(**overrides: object) -> GenerationRequest:
    spec = get_spec(MODEL)
    fields: dict[str, object] = dict(
        prompt="a red car drives through the city at sunset",
        negative_prompt="blurry, low quality",
        width=spec.default_width,
        height=spec.default_height,
        num_frames=5,
        num_inference_steps=4,
        guidance_scale=spec.default_guidance,
        guidance_scale_2=spec.default_guidance_2,
        seed=1234,
        fps=spec.default_fps,
    )
    return GenerationRequest(**{**fields, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def engine(models_dir: Path) -> Engine:
    return Engine(MODEL, device="cpu", models_dir=models_dir)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, torch.Tensor]]:
    """Three rank-4 adapters in the diffusers layout (`transformer.<module>.lora_A/B.weight`, no alpha)."""
    return {
        name: random_adapter(TINY_DIT, 4, "diffusers", seed=seed) for seed, name in enumerate(("both", "high", "low"))
    }


@pytest.fixture(scope="module")
def adapter_paths(adapters, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("pair")
    return {name: str(write_adapter(folder / f"{name}.safetensors", tensors)) for name, tensors in adapters.items()}


def merged_by_hand(source: Path, target: Path, per_expert: dict[str, list[tuple[dict, float]]]) -> Path:
    """A copy of checkpoint `source` whose `transformer/` and `transformer_2/` weights have
    W += scale * B @ A added for every (adapter, scale) listed for that folder."""
    shutil.copytree(source, target)
    for folder, merges in per_expert.items():
        weights = load_file(str(source / folder / WEIGHTS))
        for tensors, scale in merges:
            for key, down in tensors.items():
                if not key.endswith(".lora_A.weight"):
                    continue
                module = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
                up = tensors[key.replace("lora_A", "lora_B")]
                weights[f"{module}.weight"] = weights[f"{module}.weight"] + scale * (up @ down)
        save_file(weights, str(target / folder / WEIGHTS))
    return target


def test_one_adapter_goes_into_both_experts(engine, adapters, adapter_paths, tmp_path) -> None:
    plain = engine.generate(request())
    result = engine.generate(request(loras=(LoraRef("both", adapter_paths["both"], 0.8),)))
    assert result.lora_mode == "fused"
    by_hand = merged_by_hand(
        engine.folder,
        tmp_path / "merged",
        {"transformer": [(adapters["both"], 0.8)], "transformer_2": [(adapters["both"], 0.8)]},
    )
    expected = Engine(by_hand, device="cpu").generate(request())
    torch.testing.assert_close(result.latents, expected.latents, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(result.latents, plain.latents, rtol=1e-3, atol=1e-3)
    assert torch.equal(engine.generate(request()).latents, plain.latents)  # both experts restored exactly


@pytest.fixture(scope="module")
def pair_by_hand(engine, adapters, tmp_path_factory) -> torch.Tensor:
    """Final latents of the checkpoint with "high" merged into transformer/ (scale 1) and "low"
    into transformer_2/ (scale 0.7), by hand."""
    folder = merged_by_hand(
        engine.folder,
        tmp_path_factory.mktemp("pair-merged") / "merged",
        {"transformer": [(adapters["high"], 1.0)], "transformer_2": [(adapters["low"], 0.7)]},
    )
    return Engine(folder, device="cpu").generate(request()).latents


def pair(adapter_paths: dict[str, str]) -> tuple[LoraRef, ...]:
    return (
        LoraRef("high", adapter_paths["high"], 1.0, expert=HIGH_NOISE_EXPERT),
        LoraRef("low", adapter_paths["low"], 0.7, expert=LOW_NOISE_EXPERT),
    )


def test_a_pair_goes_high_into_transformer_and_low_into_transformer_2(engine, adapter_paths, pair_by_hand) -> None:
    result = engine.generate(request(loras=pair(adapter_paths)))
    torch.testing.assert_close(result.latents, pair_by_hand, rtol=1e-5, atol=1e-5)
    # the other way round is another model
    swapped = tuple(replace(ref, expert=1 - ref.expert) for ref in pair(adapter_paths))
    other = engine.generate(request(loras=swapped))
    assert not torch.allclose(other.latents, pair_by_hand, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(("offload", "mode"), [("model", "fused"), ("none", "runtime"), ("layerwise", "runtime")])
def test_every_placement_and_mode_applies_the_pair_alike(
    models_dir, adapter_paths, pair_by_hand, offload, mode
) -> None:
    # "model": the experts swap (the idle one in pinned host memory: edits go to its host copy);
    # "layerwise": each expert streams its blocks, and its adapters ride in runtime slots
    settings = EngineSettings.defaults().model_copy(update={"lora_mode": mode, "lora_runtime_rank": 8})
    placed = Engine(
        MODEL,
        settings,
        device="cpu",
        models_dir=models_dir,
        offload=offload,
        resident_blocks=0 if offload == "layerwise" else None,
    )
    result = placed.generate(request(loras=pair(adapter_paths)))
    assert result.lora_mode == mode
    torch.testing.assert_close(result.latents, pair_by_hand, rtol=1e-5, atol=1e-5)


def test_an_adapter_for_a_second_expert_is_refused_on_a_one_transformer_model(tiny_engine, make_request) -> None:
    from spec.errors import CodedError

    with pytest.raises(CodedError) as refused:
        tiny_engine.check_request(make_request(loras=(LoraRef("low", "unused.safetensors", expert=LOW_NOISE_EXPERT),)))
    assert refused.value.param == "loras"
