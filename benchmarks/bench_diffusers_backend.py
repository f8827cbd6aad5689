"""vidq's diffusers backend against plain diffusers, per family, at each family's default shape.

For each family: one diffusers pipeline with random bf16 weights built from the checkpoint's published
configs (`engine.models.diffusers_configs`; no text encoder: random prompt embeddings of the real shape
stand in for it), then, on the same pipeline object, the same request and the same seed:

1. plain diffusers: `pipe(..., output_type="latent")` as shipped (default attention, eager);
2. vidq: the backend's denoising stage with what the engine applies on a GPU: the attention kernel
   priority (`engine.optimize_diffusers.set_attention`, cuDNN first on Hopper), fused q/k/v
   projections where the model has them (CogVideoX) and regional compilation of the repeated blocks
   (`compile_repeated_blocks`, compiled once before timing, as a warm worker has it).

Each is warmed up with one step, then timed over `--steps` steps (synchronised); s/step = loop time /
steps. Parity is the relative L2 distance of vidq's final latents from plain diffusers' (same noise).
Writes a JSON list (one object per family, `bench` = "diffusers_backend") to benchmarks/results/ and
prints a table. `--time-budget` stops starting new families once that many seconds have passed (the
JSON is rewritten after every family, so a run cut short keeps what it measured).

    python benchmarks/bench_diffusers_backend.py --steps 3 --families ltx-video,cogvideox-2b
    python benchmarks/bench_diffusers_backend.py --tiny   # CPU smoke run on the tiny checkpoints
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_models import first_frame  # noqa: E402
from engine.attention import resolve_backend  # noqa: E402
from engine.optimize_diffusers import compile_repeated_blocks, fuse_projections, set_attention  # noqa: E402
from engine.pipelines.diffusers_backend import DiffusersDenoisingStage  # noqa: E402
from engine.pipelines.diffusers_families import FAMILIES  # noqa: E402
from engine.stages.state import PipelineState  # noqa: E402
from spec.registry import get_spec  # noqa: E402
from spec.request import GenerationRequest  # noqa: E402

FAMILY_OF = {
    "ltx-video": "ltx",
    "cogvideox-2b": "cogvideox",
    "cogvideox-5b": "cogvideox",
    "cogvideox-5b-i2v": "cogvideox",
    "mochi-1": "mochi",
    "hunyuanvideo": "hunyuanvideo",
}
TINY_OF = {
    "ltx-video": "tiny-ltx-video",
    "cogvideox-2b": "tiny-cogvideox",
    "cogvideox-5b": "tiny-cogvideox",
    "cogvideox-5b-i2v": "tiny-cogvideox-i2v",
    "mochi-1": "tiny-mochi",
    "hunyuanvideo": "tiny-hunyuanvideo",
}
# Each checkpoint's scheduler (class, config) as published.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ltx-video": (
        "FlowMatchEulerDiscreteScheduler",
        {"use_dynamic_shifting": True, "base_image_seq_len": 1024, "max_image_seq_len": 4096, "base_shift": 0.95,
         "max_shift": 2.05},
    ),
    "cogvideox-2b": (
        "CogVideoXDDIMScheduler",
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction",
         "rescale_betas_zero_snr": True, "snr_shift_scale": 3.0, "timestep_spacing": "trailing", "clip_sample": False,
         "set_alpha_to_one": True},
    ),
    "cogvideox-5b": (
        "CogVideoXDPMScheduler",
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction",
         "rescale_betas_zero_snr": True, "snr_shift_scale": 1.0, "timestep_spacing": "trailing", "clip_sample": False,
         "set_alpha_to_one": True},
    ),
    "cogvideox-5b-i2v": (
        "CogVideoXDPMScheduler",
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction",
         "rescale_betas_zero_snr": True, "snr_shift_scale": 1.0, "timestep_spacing": "trailing", "clip_sample": False,
         "set_alpha_to_one": True},
    ),
    "mochi-1": ("FlowMatchEulerDiscreteScheduler", {}),
    "hunyuanvideo": ("FlowMatchEulerDiscreteScheduler", {"shift": 7.0}),
}  # fmt: skip
# Mochi's linear-quadratic sigma schedule needs at least two steps.
WARMUP_STEPS = 2
PIPELINES = {
    "ltx": "LTXPipeline",
    "cogvideox": "CogVideoXPipeline",
    "mochi": "MochiPipeline",
    "hunyuanvideo": "HunyuanVideoPipeline",
}
# Image-to-video checkpoints: their pipeline class, and a synthetic first frame in each request.
IMAGE_PIPELINES = {"cogvideox-5b-i2v": "CogVideoXImageToVideoPipeline"}


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


def build_published(name: str, device: torch.device, dtype: torch.dtype) -> Any:
    """The checkpoint's pipeline with random weights (seed 0) and no text encoder."""
    import diffusers

    from engine.models.diffusers_configs import build

    torch.manual_seed(0)
    with torch.device(device):
        transformer = build(name, "transformer").to(dtype).eval()
        vae = build(name, "vae").to(dtype).eval()
    scheduler_class, scheduler_config = SCHEDULERS[name]
    scheduler = getattr(diffusers, scheduler_class)(**scheduler_config)
    pipeline_class = getattr(diffusers, IMAGE_PIPELINES.get(name) or PIPELINES[FAMILY_OF[name]])
    components = {
        "transformer": transformer,
        "vae": vae,
        "scheduler": scheduler,
        "text_encoder": None,
        "tokenizer": None,
    }
    if FAMILY_OF[name] == "hunyuanvideo":
        components |= {"text_encoder_2": None, "tokenizer_2": None}
    pipe = pipeline_class(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny(name: str, device: torch.device, dtype: torch.dtype) -> Any:
    import diffusers

    from engine.models.tiny_diffusers import write_tiny_diffusers

    folder = write_tiny_diffusers(TINY_OF[name], Path(tempfile.gettempdir()) / "vidq-bench" / TINY_OF[name])
    pipe = diffusers.DiffusionPipeline.from_pretrained(folder, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_conditioning(family: str, do_cfg: bool, text_dim: int, device: torch.device, dtype: torch.dtype) -> dict:
    """Prompt embeddings of the shape each family's text encoder produces (random values)."""
    tokens = {"ltx": 128, "cogvideox": 226, "mochi": 256, "hunyuanvideo": 256}[family]
    generator = torch.Generator("cpu").manual_seed(1)

    def embeds() -> torch.Tensor:
        return torch.randn(1, tokens, text_dim, generator=generator).to(device, dtype)

    if family == "hunyuanvideo":
        pooled_dim = 768 if text_dim == 4096 else 16
        return {
            "prompt_embeds": embeds(),
            "pooled_prompt_embeds": torch.randn(1, pooled_dim, generator=generator).to(device, dtype),
            "prompt_attention_mask": torch.ones(1, tokens, dtype=torch.long, device=device),
        }
    conditioning = {"prompt_embeds": embeds(), "negative_prompt_embeds": embeds() if do_cfg else None}
    if family in ("ltx", "mochi"):
        mask = torch.ones(1, tokens, dtype=torch.bool, device=device)
        conditioning |= {"prompt_attention_mask": mask, "negative_prompt_attention_mask": mask if do_cfg else None}
    return conditioning


def bench_family(name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    family = FAMILIES[FAMILY_OF[name]]
    spec = get_spec(TINY_OF[name] if args.tiny else name)
    pipe = (build_tiny if args.tiny else build_published)(name, device, dtype)
    text_dim = 32 if args.tiny else 4096
    image = first_frame(spec.default_width, spec.default_height) if name in IMAGE_PIPELINES else None

    def request(steps: int) -> GenerationRequest:
        return GenerationRequest(
            prompt="random embeddings",
            width=spec.default_width,
            height=spec.default_height,
            num_frames=spec.default_frames,
            num_inference_steps=steps,
            guidance_scale=spec.default_guidance,
            seed=0,
            fps=spec.default_fps,
            image=image,
        )

    conditioning = random_conditioning(family.name, request(1).do_cfg, text_dim, device, dtype)

    def run_plain(steps: int) -> tuple[float, torch.Tensor]:
        req = request(steps)
        kwargs = {
            **conditioning,
            **family.call_kwargs(req),
            "height": req.height,
            "width": req.width,
            "num_frames": req.num_frames,
            "num_inference_steps": steps,
            "guidance_scale": req.guidance_scale,
            "generator": torch.Generator("cpu").manual_seed(req.seed),
            "output_type": "latent",
            "return_dict": False,
        }
        if image is not None:
            kwargs["image"] = image
        sync(device)
        started = time.perf_counter()
        latents = pipe(**kwargs)[0]
        sync(device)
        return time.perf_counter() - started, latents

    stage: DiffusersDenoisingStage | None = None

    def run_vidq(steps: int) -> tuple[float, torch.Tensor]:
        assert stage is not None
        req = request(steps)
        state = PipelineState(request=req, generator=torch.Generator("cpu").manual_seed(req.seed))
        state.conditioning = conditioning
        sync(device)
        started = time.perf_counter()
        with torch.inference_mode():
            stage(state)
        sync(device)
        return time.perf_counter() - started, state.latents

    with torch.inference_mode():
        run_plain(WARMUP_STEPS)  # warm-up: cuDNN/cuBLAS heuristics, allocator
        plain_s, plain_latents = run_plain(args.steps)

    backend = resolve_backend(args.attention_backend, device)
    around_loop = set_attention(pipe.transformer, family, backend)
    fused = not args.no_fuse and fuse_projections(pipe.transformer, family)
    compiled_blocks = 0 if args.no_compile else compile_repeated_blocks(pipe.transformer, family.repeated_blocks)
    pipeline_name = IMAGE_PIPELINES.get(name) or PIPELINES[family.name]
    stage = DiffusersDenoisingStage(device, family, {pipeline_name: pipe}, around_loop)
    started = time.perf_counter()
    run_vidq(WARMUP_STEPS)  # warm-up: compiles the blocks for this shape (a warm worker has done it already)
    warm_s = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    vidq_s, vidq_latents = run_vidq(args.steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    parity = ((vidq_latents.float() - plain_latents.float()).norm() / plain_latents.float().norm()).item()

    diffusers_step, vidq_step = plain_s / args.steps, vidq_s / args.steps
    print(
        f"  {name}: attention {backend}, fused projections {fused}, {compiled_blocks} blocks compiled, "
        f"warm-up (compile) {warm_s:.1f} s",
        flush=True,
    )
    return {
        "bench": "diffusers_backend",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "date": dt.date.today().isoformat(),
        "commit": commit(),
        "model": spec.name,
        "size": spec.default_size,
        "num_frames": spec.default_frames,
        "steps": args.steps,
        "diffusers_s_per_step": round(diffusers_step, 4),
        "vidq_s_per_step": round(vidq_step, 4),
        "speedup": round(diffusers_step / vidq_step, 3),
        "parity_rel_err": float(f"{parity:.3e}"),
        "peak_vram_gb": round(peak, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(FAMILY_OF), help="registry names, in order")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-fuse", action="store_true", help="keep separate q/k/v projections")
    parser.add_argument("--tiny", action="store_true", help="the tiny checkpoints on the CPU in float32 (smoke run)")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds after which no family starts")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    tag = "cpu-tiny" if args.tiny else torch.cuda.get_device_name(device).split()[-1].lower()
    out = args.out or ROOT / "benchmarks" / "results" / f"diffusers_backend-{tag}-{dt.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    results, skipped = [], []
    for name in args.families.split(","):
        if args.time_budget is not None and time.perf_counter() - started > args.time_budget:
            skipped.append(name)
            print(f"  {name}: not run (time budget of {args.time_budget:.0f} s spent)", flush=True)
            continue
        try:
            results.append(bench_family(name, args, device, dtype))
        except Exception as exc:  # report and go on: one family's failure must not lose the others
            traceback.print_exc()
            skipped.append(name)
            print(f"  {name}: FAILED {type(exc).__name__}: {str(exc)[:400]}", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        out.write_text(json.dumps(results, indent=2) + "\n")

    print(f"\n{'model':<16} {'size':>9} {'frames':>6} {'diffusers s/step':>17} {'vidq s/step':>12} {'speedup':>8} "
          f"{'parity':>9} {'peak GB':>8}")  # fmt: skip
    for r in results:
        print(
            f"{r['model']:<16} {r['size']:>9} {r['num_frames']:>6} {r['diffusers_s_per_step']:>17.4f} "
            f"{r['vidq_s_per_step']:>12.4f} {r['speedup']:>7.2f}x {r['parity_rel_err']:>9.2e} {r['peak_vram_gb']:>8.1f}"
        )
    if skipped:
        print(f"not run: {', '.join(skipped)}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
