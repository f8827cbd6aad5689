"""LoRA adapters on the tiny DiT: every format against diffusers, both modes, exact restore."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.lora.adapter import adapter_from_tensors
from engine.lora.apply import LoraApplier
from engine.lora.runtime import install_runtime_slots
from engine.lora.synthetic import FORMATS, random_adapter, write_adapter
from engine.models.tiny import TINY_TRANSFORMER
from engine.models.wan_transformer import WanTransformer3DModel
from spec.lora_keys import DiTShape, LoraFormatError, check_adapter, read_header
from spec.request import LoraRef

TINY_DIT = DiTShape.from_config(TINY_TRANSFORMER.to_dict())


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


@pytest.fixture(scope="module")
def diffusers_pipe(tiny_folder):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 16, 3, 8, 8, generator=generator)
    text = torch.randn(1, 12, TINY_TRANSFORMER.text_dim, generator=generator)
    return latents, torch.tensor([700.0]), text


def with_diffusers_adapters(pipe, adapters: list[tuple[dict[str, torch.Tensor], float]], *args):
    """diffusers' output with `load_lora_weights` + `set_adapters` (their converter edits the
    tensors it is given in place, so it gets copies)."""
    names = [f"a{i}" for i in range(len(adapters))]
    for name, (tensors, _) in zip(names, adapters, strict=True):
        pipe.load_lora_weights({k: v.clone() for k, v in tensors.items()}, adapter_name=name)
    pipe.set_adapters(names, [scale for _, scale in adapters])
    try:
        with torch.no_grad():
            return pipe.transformer(*args, return_dict=False)[0]
    finally:
        pipe.delete_adapters(names)


def our_model(tiny_folder, slot_rank: int = 0) -> WanTransformer3DModel:
    model = WanTransformer3DModel.from_pretrained(tiny_folder / "transformer").fuse_projections()
    if slot_rank:
        install_runtime_slots(model, slot_rank)
    return model


@pytest.mark.parametrize(
    ("fmt", "mode"), [(fmt, "fused") for fmt in FORMATS] + [("wan", "runtime"), ("distill", "runtime")]
)
def test_each_format_matches_diffusers_set_adapters(tiny_folder, diffusers_pipe, inputs, fmt, mode) -> None:
    tensors = random_adapter(TINY_DIT, 4, fmt, seed=3)
    expected = with_diffusers_adapters(diffusers_pipe, [(tensors, 0.8)], *inputs)
    model = our_model(tiny_folder, slot_rank=8 if mode == "runtime" else 0)
    with torch.no_grad():
        base = model(*inputs)
    applier = LoraApplier(model, torch.device("cpu"))
    assert applier.apply([(adapter_from_tensors("a", tensors), 0.8)], mode) == mode
    with torch.no_grad():
        actual = model(*inputs)
    assert relative_error(actual, expected) < 1e-4
    assert relative_error(base, expected) > 1e-3  # the adapter changes the output: the check has teeth
    applier.apply([], mode)
    with torch.no_grad():
        assert torch.equal(model(*inputs), base)  # restored bit for bit


@pytest.mark.parametrize("mode", ["fused", "runtime"])
def test_two_adapters_at_once_match_diffusers(tiny_folder, diffusers_pipe, inputs, mode) -> None:
    style = random_adapter(TINY_DIT, 4, "diffusers", seed=5)
    distill = random_adapter(TINY_DIT, 8, "distill", seed=6)
    expected = with_diffusers_adapters(diffusers_pipe, [(style, 0.7), (distill, 1.0)], *inputs)
    model = our_model(tiny_folder, slot_rank=12 if mode == "runtime" else 0)
    applier = LoraApplier(model, torch.device("cpu"))
    pair = [(adapter_from_tensors("style", style), 0.7), (adapter_from_tensors("distill", distill), 1.0)]
    assert applier.apply(pair, mode) == mode
    with torch.no_grad():
        assert relative_error(model(*inputs), expected) < 1e-4


def test_switching_adapters_equals_applying_the_second_alone(tiny_folder, inputs) -> None:
    first = adapter_from_tensors("first", random_adapter(TINY_DIT, 4, "wan", seed=1))
    second = adapter_from_tensors("second", random_adapter(TINY_DIT, 4, "kohya", seed=2))
    model = our_model(tiny_folder)
    applier = LoraApplier(model, torch.device("cpu"))
    applier.apply([(second, 0.5)], "fused")
    with torch.no_grad():
        alone = model(*inputs)
    applier.apply([(first, 1.0)], "fused")
    applier.apply([(second, 0.5)], "fused")
    with torch.no_grad():
        assert torch.equal(model(*inputs), alone)


def test_runtime_falls_back_to_fused_when_the_slots_are_too_small(tiny_folder, inputs) -> None:
    adapter = adapter_from_tensors("big", random_adapter(TINY_DIT, 8, "diffusers", seed=4))
    runtime, fused = our_model(tiny_folder, slot_rank=4), our_model(tiny_folder)
    assert LoraApplier(runtime, torch.device("cpu")).apply([(adapter, 1.0)], "runtime") == "fused"
    LoraApplier(fused, torch.device("cpu")).apply([(adapter, 1.0)], "fused")
    with torch.no_grad():
        assert torch.equal(runtime(*inputs), fused(*inputs))


def test_full_weight_diff_is_added_times_the_scale(tiny_folder) -> None:
    delta = torch.randn(TINY_DIT.dim, TINY_DIT.dim)
    adapter = adapter_from_tensors("d", {"diffusion_model.blocks.1.self_attn.k.diff": delta})
    model = our_model(tiny_folder)  # to_k lives in rows [dim, 2*dim) of the fused q|k|v weight
    before = model.blocks[1].attn1.to_qkv.weight.detach().clone()
    LoraApplier(model, torch.device("cpu")).apply([(adapter, 0.25)], "fused")
    after = model.blocks[1].attn1.to_qkv.weight
    rows = slice(TINY_DIT.dim, 2 * TINY_DIT.dim)
    assert torch.allclose(after[rows], before[rows] + 0.25 * delta, atol=1e-6)
    assert torch.equal(after[: TINY_DIT.dim], before[: TINY_DIT.dim])


def test_upload_check_reads_keys_and_shapes_without_tensors(tmp_path) -> None:
    path = write_adapter(tmp_path / "a.safetensors", random_adapter(TINY_DIT, 4, "distill"))
    shapes, _ = read_header(path)
    layout, summary = check_adapter(shapes, TINY_DIT)
    assert summary.format == "wan" and summary.rank == 4
    assert "blocks.0.attn1.to_q" in layout.low_rank and "blocks.0.attn1.to_q.bias" in layout.deltas

    other_model = DiTShape(dim=1536, ffn_dim=8960, num_layers=2)  # 1.3B widths
    with pytest.raises(LoraFormatError, match="another model"):
        check_adapter(shapes, other_model)
    with pytest.raises(LoraFormatError, match="not a LoRA tensor"):
        check_adapter({"blocks.0.attn1.to_q.weight": (32, 32)}, TINY_DIT)
    with pytest.raises(LoraFormatError, match="safetensors"):
        read_header(b"\x05\x00\x00\x00\x00\x00\x00\x00nope!")


def test_dit_shape_table_matches_the_model() -> None:
    with torch.device("meta"):
        model = WanTransformer3DModel(TINY_TRANSFORMER)
    assert TINY_DIT.parameter_shapes() == {name: tuple(p.shape) for name, p in model.named_parameters()}


# -- through the engine ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    return {
        "style": str(write_adapter(folder / "style.safetensors", random_adapter(TINY_DIT, 4, "diffusers", seed=8))),
        "distill": str(write_adapter(folder / "distill.safetensors", random_adapter(TINY_DIT, 8, "distill", seed=9))),
    }


@pytest.fixture(scope="module")
def fresh_engine(models_dir, tiny_folder):
    from engine.engine import Engine

    return Engine("tiny-wan", device="cpu", models_dir=models_dir)


def test_job_after_a_lora_job_is_bitwise_a_fresh_engines(fresh_engine, make_request, adapter_files) -> None:
    request = make_request(num_inference_steps=2, num_frames=5)
    fresh = fresh_engine.generate(request)
    with_lora = fresh_engine.generate(replace(request, loras=(LoraRef("style", adapter_files["style"], 1.0),)))
    assert with_lora.lora_mode == "fused" and "lora" in with_lora.stage_timings_s
    assert not torch.equal(with_lora.latents, fresh.latents)
    after = fresh_engine.generate(request)
    assert after.lora_mode is None
    assert torch.equal(after.latents, fresh.latents)
    zero = fresh_engine.generate(replace(request, loras=(LoraRef("style", adapter_files["style"], 0.0),)))
    assert torch.equal(zero.latents, fresh.latents)  # scale 0 is no adapter
    assert fresh_engine.warm_adapters == ["style"]


def test_distilled_preset_matches_diffusers_pipeline(fresh_engine, diffusers_pipe, make_request, adapter_files):
    """Two adapters, 4 steps, guidance 1 (one branch), the adapter's flow shift: whole pipeline."""
    from diffusers import UniPCMultistepScheduler
    from safetensors.torch import load_file

    loras = (LoraRef("distill", adapter_files["distill"], 1.0), LoraRef("style", adapter_files["style"], 0.6))
    request = make_request(num_inference_steps=4, guidance_scale=1.0, flow_shift=5.0, loras=loras)
    batches = []
    hook = fresh_engine.components.transformer.register_forward_pre_hook(
        lambda module, args: batches.append(args[0].shape[0])
    )
    try:
        result = fresh_engine.generate(request)
    finally:
        hook.remove()
    assert batches == [1] * 4  # no unconditional branch

    scheduler = diffusers_pipe.scheduler
    diffusers_pipe.scheduler = UniPCMultistepScheduler.from_config(scheduler.config, flow_shift=5.0)
    names = ["distill", "style"]
    for ref in loras:
        diffusers_pipe.load_lora_weights(load_file(ref.path), adapter_name=ref.key)
    diffusers_pipe.set_adapters(names, [ref.scale for ref in loras])
    try:
        prompt_embeds, _ = fresh_engine.pipeline.embedding_cache.get((fresh_engine.model_id, request.prompt, None))
        expected = diffusers_pipe(
            prompt_embeds=prompt_embeds,
            height=request.height,
            width=request.width,
            num_frames=request.num_frames,
            num_inference_steps=4,
            guidance_scale=1.0,
            generator=torch.Generator("cpu").manual_seed(request.seed),
            output_type="latent",
        ).frames
    finally:
        diffusers_pipe.delete_adapters(names)
        diffusers_pipe.scheduler = scheduler
    assert relative_error(result.latents, expected) < 1e-4


def test_layerwise_offload_runs_adapters_in_runtime_slots(
    models_dir, tiny_folder, fresh_engine, make_request, adapter_files
):
    from engine.engine import Engine

    offloaded = Engine("tiny-wan", device="cpu", models_dir=models_dir, offload="layerwise", resident_blocks=0)
    request = make_request(num_inference_steps=2, num_frames=5)
    base = offloaded.generate(request)
    lora_request = replace(request, loras=(LoraRef("distill", adapter_files["distill"], 1.0),))
    with_lora = offloaded.generate(lora_request)
    assert with_lora.lora_mode == "runtime"
    fused = fresh_engine.generate(lora_request)
    assert fused.lora_mode == "fused"
    assert relative_error(with_lora.latents, fused.latents) < 1e-5
    assert torch.equal(offloaded.generate(request).latents, base.latents)


def test_fp8_weights_made_after_a_lora_job_come_from_the_base_weights(models_dir, make_request, adapter_files):
    from engine.engine import Engine

    fp8_request = make_request(num_inference_steps=2, num_frames=5, acceleration={"fp8": True})
    expected = Engine("tiny-wan", device="cpu", models_dir=models_dir, fp8_emulation=True).generate(fp8_request)
    engine = Engine("tiny-wan", device="cpu", models_dir=models_dir, fp8_emulation=True)
    lora_request = make_request(num_inference_steps=1, num_frames=5, loras=(LoraRef("style", adapter_files["style"]),))
    assert engine.generate(lora_request).lora_mode == "fused"
    assert torch.equal(engine.generate(fp8_request).latents, expected.latents)
