"""vidq's engine against diffusers' WanPipeline, in one process, on the same random weights.

    python benchmarks/bench_engine.py                      # Wan2.1-T2V-1.3B, 832x480, 81 frames, CFG
    python benchmarks/bench_engine.py --steps 4 --with-14b-forward
    python benchmarks/bench_engine.py --config tiny-wan --size 64x64 --frames 9   # a CPU smoke run

Runs, in order and on the same weights, prompt embeddings and initial noise:
1. diffusers `WanPipeline` with its default settings (cond and uncond as two forwards per step),
2. the same pipeline with `torch.compile` on its transformer (the second baseline),
3. the engine's denoising and decoding stages (fused projections, compiled blocks, batched CFG).
Per-step times are medians over the timed steps after a warm-up run (compile excluded and reported
on its own); the parity error is the relative L2 error of the engine's final latents against
diffusers'. Prints a table and writes one JSON object to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.models.tiny import TINY_TRANSFORMER  # noqa: E402
from engine.models.wan_transformer import WanTransformer3DModel, WanTransformerConfig  # noqa: E402
from engine.optimize import optimize_transformer  # noqa: E402
from engine.stages.decoding import DecodingStage  # noqa: E402
from engine.stages.denoising import DenoisingStage  # noqa: E402
from engine.stages.state import PipelineState  # noqa: E402
from spec.registry import parse_size  # noqa: E402
from spec.request import GenerationRequest  # noqa: E402

CONFIGS = {
    "tiny-wan": TINY_TRANSFORMER,
    # The published transformer/config.json of the Wan2.1 text-to-video checkpoints.
    "wan2.1-t2v-1.3b": WanTransformerConfig(
        num_attention_heads=12, attention_head_dim=128, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30
    ),
    "wan2.1-t2v-14b": WanTransformerConfig(
        num_attention_heads=40, attention_head_dim=128, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40
    ),
}
TEXT_TOKENS = 512


def commit() -> str:
    if os.environ.get("VIDQ_COMMIT"):
        return os.environ["VIDQ_COMMIT"]
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


@contextmanager
def building_in(dtype: torch.dtype, device: torch.device) -> Iterator[None]:
    """Construct modules with seed 0 directly in `dtype` on `device`: a 14B model in float32
    would not fit, and every rank or run gets the same random weights."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def random_engine_dit(config: WanTransformerConfig, dtype: torch.dtype, device: torch.device) -> WanTransformer3DModel:
    """Our DiT with random weights, `_keep_in_fp32_modules` in float32 as a checkpoint load would."""
    with building_in(dtype, device):
        model = WanTransformer3DModel(config)
    return model.to(device).cast(dtype).eval().requires_grad_(False)  # .to: the RoPE tables


def diffusers_transformer(config: WanTransformerConfig, dtype: torch.dtype, device: torch.device):  # type: ignore[no-untyped-def]
    """diffusers' model with random weights, cast as `from_pretrained(torch_dtype=dtype)` would:
    `_keep_in_fp32_modules` stay float32, the rest is `dtype`."""
    from diffusers import WanTransformer3DModel as DiffusersWan

    kwargs = {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
    with building_in(dtype, device):
        model = DiffusersWan(**kwargs)
    keep = WanTransformer3DModel._keep_in_fp32_modules
    for name, param in model.named_parameters():
        if any(part in keep for part in name.split(".")):
            param.data = param.data.float()
    return model.eval().requires_grad_(False)


def engine_transformer(config: WanTransformerConfig, state_dict: dict[str, torch.Tensor]) -> WanTransformer3DModel:
    """Our model on the very same weights (copied, so that fusing never touches diffusers')."""
    with torch.device("meta"):
        model = WanTransformer3DModel(config)
    model.load_state_dict({k: v.clone() for k, v in state_dict.items()}, strict=True, assign=True)
    device = next(iter(state_dict.values())).device
    return model.to(device).eval().requires_grad_(False)  # .to moves the RoPE tables (built on the CPU)


def time_call(fn, device: torch.device) -> float:  # type: ignore[no-untyped-def]
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def bench_forward_14b(device: torch.device, dtype: torch.dtype, height: int, width: int, frames: int) -> dict:
    """One DiT forward (batch 1) of the 14B configuration: diffusers eager vs the engine's."""
    config = CONFIGS["wan2.1-t2v-14b"]
    reference = diffusers_transformer(config, dtype, device)
    generator = torch.Generator(device).manual_seed(3)
    latents = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, device=device, generator=generator)
    latents = latents.to(dtype)
    text = torch.randn(1, TEXT_TOKENS, config.text_dim, device=device, generator=generator).to(dtype)
    timestep = torch.tensor([500.0], device=device)

    def run_reference(model) -> torch.Tensor:  # type: ignore[no-untyped-def]
        return model(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]

    with torch.inference_mode():
        expected = run_reference(reference)
        diffusers_s = min(time_call(lambda: run_reference(reference), device) for _ in range(2))
        ours = engine_transformer(config, reference.state_dict())
        reference = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        optimize_transformer(ours, fuse=True, compile=True)
        compile_s = time_call(lambda: ours(latents, timestep, text), device)
        vidq_s = min(time_call(lambda: ours(latents, timestep, text), device) for _ in range(2))
        parity = relative_error(ours(latents, timestep, text), expected)
    return {
        "model": "wan2.1-t2v-14b",
        "diffusers_forward_s": round(diffusers_s, 4),
        "vidq_forward_s": round(vidq_s, 4),
        "speedup": round(diffusers_s / vidq_s, 3),
        "compile_s": round(compile_s, 1),
        "parity_rel_err": parity,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=CONFIGS, default="wan2.1-t2v-1.3b")
    parser.add_argument("--size", default="832x480")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=4, help="timed denoising steps per pipeline")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--flow-shift", type=float, default=3.0)
    parser.add_argument("--skip-diffusers-compile", action="store_true")
    parser.add_argument("--with-14b-forward", action="store_true")
    parser.add_argument(
        "--fp32-reference", action=argparse.BooleanOptionalAction, default=True,
        help="also run diffusers in float32 to show the bf16 noise floor",
    )  # fmt: skip
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = CONFIGS[args.config]
    width, height = parse_size(args.size)
    latent_shape = (1, 16, (args.frames - 1) // 4 + 1, height // 8, width // 8)

    # 0. Same weights, embeddings and noise for everyone.
    reference = diffusers_transformer(config, dtype, device)
    torch.manual_seed(1)
    with torch.device(device):
        vae = AutoencoderKLWan(base_dim=16, z_dim=16) if args.config == "tiny-wan" else AutoencoderKLWan()
    vae = vae.float().eval().requires_grad_(False)
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=args.flow_shift
    )
    generator = torch.Generator(device).manual_seed(2)
    prompt_embeds = torch.randn(1, TEXT_TOKENS, config.text_dim, device=device, generator=generator).to(dtype)
    negative_embeds = torch.randn(1, TEXT_TOKENS, config.text_dim, device=device, generator=generator).to(dtype)
    noise = torch.randn(latent_shape, device=device, generator=generator, dtype=torch.float32)

    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=reference, vae=vae, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)

    def run_diffusers(steps: int, output_type: str = "latent", model=None) -> torch.Tensor:  # type: ignore[no-untyped-def]
        pipe.transformer = model if model is not None else reference
        model_dtype = torch.float32 if pipe.transformer.dtype == torch.float32 else dtype
        return pipe(
            prompt_embeds=prompt_embeds.to(model_dtype),
            negative_prompt_embeds=negative_embeds.to(model_dtype),
            latents=noise.clone(),
            height=height,
            width=width,
            num_frames=args.frames,
            num_inference_steps=steps,
            guidance_scale=args.guidance,
            output_type=output_type,
            return_dict=False,
        )[0]

    results: dict[str, object] = {}
    outputs: dict[str, torch.Tensor] = {}

    def timed_run(key: str, steps: int, model=None) -> float:  # type: ignore[no-untyped-def]
        sync(device)
        start = time.perf_counter()
        outputs[key] = run_diffusers(steps, model=model)
        sync(device)
        return time.perf_counter() - start

    with torch.inference_mode():
        # 1. diffusers, default settings
        run_diffusers(1)  # warm-up (cuBLAS/cuDNN plans)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        results["diffusers_s_per_step"] = timed_run("diffusers", args.steps) / args.steps
        results["diffusers_peak_vram_gb"] = (
            torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
        )
        results["diffusers_e2e_s"] = time_call(lambda: run_diffusers(args.steps, "np"), device)
        print(f"diffusers: {results['diffusers_s_per_step']:.3f} s/step", flush=True)

        # The bf16 noise floor: the same weights in float32 (TF32 off), as a truth to measure against.
        if args.fp32_reference:
            allow_tf32 = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            fp32_model = copy.deepcopy(reference).float()
            outputs["fp32"] = run_diffusers(args.steps, model=fp32_model)
            del fp32_model
            torch.backends.cuda.matmul.allow_tf32 = allow_tf32
            torch.backends.cudnn.allow_tf32 = True
            results["diffusers_vs_fp32_rel_err"] = relative_error(outputs["diffusers"], outputs["fp32"])

        # 2. diffusers + torch.compile (whole transformer, as diffusers documents)
        if not args.skip_diffusers_compile:
            compiled = torch.compile(reference)
            results["diffusers_compile_s"] = time_call(lambda: run_diffusers(1, model=compiled), device)
            results["diffusers_compiled_s_per_step"] = timed_run("compiled", args.steps, compiled) / args.steps
            results["diffusers_compiled_vs_diffusers_rel_err"] = relative_error(
                outputs["compiled"], outputs["diffusers"]
            )
            del compiled
            print(f"diffusers compiled: {results['diffusers_compiled_s_per_step']:.3f} s/step", flush=True)
        torch._dynamo.reset()

        # 3. the engine: fused projections, GELU epilogue, compiled blocks, batched CFG
        ours = engine_transformer(config, reference.state_dict())
        optimize_transformer(ours, fuse=True, compile=True)
        request = GenerationRequest(
            prompt="-", width=width, height=height, num_frames=args.frames, num_inference_steps=args.steps,
            guidance_scale=args.guidance, seed=0, fps=16,
        )  # fmt: skip
        denoise = DenoisingStage(device, ours, dict(scheduler.config))
        decode = DecodingStage(device, vae)

        def run_engine() -> PipelineState:
            state = PipelineState(request=request, on_step=lambda info: None)
            state.prompt_embeds, state.negative_prompt_embeds = prompt_embeds, negative_embeds
            state.latents = noise.clone()
            denoise(state)
            return state

        results["vidq_compile_s"] = run_engine().stage_timings_s.get("compile", 0.0)  # compiles this shape
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        state = run_engine()
        results["vidq_s_per_step"] = state.stage_timings_s["denoising"] / args.steps
        results["peak_vram_gb"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
        results["parity_rel_err"] = relative_error(state.latents, outputs["diffusers"])
        if "fp32" in outputs:
            results["vidq_vs_fp32_rel_err"] = relative_error(state.latents, outputs["fp32"])
        decode(state)
        results["vae_decode_s"] = state.stage_timings_s["decoding"]
        results["vidq_e2e_s"] = state.stage_timings_s["denoising"] + state.stage_timings_s["decoding"]
        print(f"vidq: {results['vidq_s_per_step']:.3f} s/step, parity {results['parity_rel_err']:.2e}", flush=True)
        outputs.clear()
        ours = denoise = decode = pipe = reference = state = None  # free the 1.3B models before the 14B
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    if args.with_14b_forward:
        results["forward_14b"] = bench_forward_14b(device, dtype, height, width, args.frames)
        print(f"14B forward: {results['forward_14b']}", flush=True)

    record = {
        "bench": "engine_vs_diffusers",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "date": datetime.now(UTC).date().isoformat(),
        "commit": commit(),
        "torch": torch.__version__,
        "model": args.config,
        "height": height,
        "width": width,
        "num_frames": args.frames,
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "dtype": str(dtype).removeprefix("torch."),
        "diffusers_compiled_s_per_step": None,
        **results,
    }
    record["speedup"] = record["diffusers_s_per_step"] / record["vidq_s_per_step"]
    compiled = record["diffusers_compiled_s_per_step"]
    record["speedup_vs_compiled"] = compiled / record["vidq_s_per_step"] if compiled else None
    record = {k: round(v, 4) if isinstance(v, float) and not k.endswith("rel_err") else v for k, v in record.items()}

    print()
    print(f"{'':28}{'s/step':>10}{'vs vidq':>10}")
    for label, key in [("diffusers", "diffusers_s_per_step"), ("diffusers + compile", "diffusers_compiled_s_per_step"),
                       ("vidq", "vidq_s_per_step")]:  # fmt: skip
        value = record.get(key)
        if value:
            print(f"{label:28}{value:>10.3f}{value / record['vidq_s_per_step']:>9.2f}x")
    print(f"parity (relative L2 of final latents vs diffusers): {record['parity_rel_err']:.2e}")
    for key in ("diffusers_vs_fp32_rel_err", "vidq_vs_fp32_rel_err", "diffusers_compiled_vs_diffusers_rel_err"):
        if key in record:
            print(f"  {key}: {record[key]:.2e}")
    print(f"peak VRAM: vidq {record['peak_vram_gb']:.1f} GB, diffusers {record['diffusers_peak_vram_gb']:.1f} GB")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    device_tag = record["device"].split()[1].lower() if device.type == "cuda" else "cpu"
    path = args.out_dir / f"engine_vs_diffusers-{args.config}-{device_tag}-{record['date']}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
