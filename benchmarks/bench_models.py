"""vidq against diffusers per model family, in one process, on the same random weights (bf16).

    python benchmarks/bench_models.py                          # every model, default size and frames
    python benchmarks/bench_models.py --models wan2.2-ti2v-5b --budget-s 300
    python benchmarks/bench_models.py --tiny                   # a CPU smoke run on tiny configs

For each model (Wan2.2-TI2V-5B image-to-video, Wan2.1-I2V-14B-480P, Wan2.2-T2V-A14B,
Wan2.2-I2V-A14B) at its registry default size and frame count, with CFG at its default guidance:
1. diffusers' own pipeline (WanImageToVideoPipeline or WanPipeline with transformer_2 /
   boundary_ratio / expand_timesteps) on random weights, random prompt and CLIP embeddings, a
   random VAE and a synthetic first frame;
2. vidq's image-conditioning and denoising stages on the very same weights, embeddings, image and
   noise (fused projections, GELU epilogue, compiled blocks, batched CFG; compile time excluded).
diffusers' seconds per step are measured between the end of its first and last steps; vidq's as
the whole synchronized denoising loop less its compile warm-up, over every step (so vidq pays its
first step, diffusers does not); `parity_rel_err` is the relative L2 error of vidq's
final latents against diffusers'. For two-expert models the run covers steps of both experts, and
the cost of one expert swap (pinned host -> GPU copy of one 14B expert, what the planner's "swap"
placement pays at the boundary on an 80 GB GPU) is measured after it.

Models whose turn comes after `--budget-s` seconds are not run and are listed as such. Writes
`benchmarks/results/model_vs_diffusers-<device>-<date>.json` (one object per model, the keys of
issue 12) and `...-details.json` (compile times, swap costs, plans, what was not run).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_engine import commit, diffusers_transformer, relative_error, sync  # noqa: E402
from engine.memory.offload import ComponentOffload  # noqa: E402
from engine.models.tiny import TINY_VAE, TINY_VAE22  # noqa: E402
from engine.models.wan_transformer import WanTransformer3DModel, WanTransformerConfig  # noqa: E402
from engine.optimize import optimize_transformer  # noqa: E402
from engine.stages.denoising import DenoisingStage  # noqa: E402
from engine.stages.image_conditioning import ImageConditioningStage  # noqa: E402
from engine.stages.state import PipelineState  # noqa: E402
from spec.memory import GIB, RequestShape, plan_memory  # noqa: E402
from spec.registry import get_spec  # noqa: E402
from spec.request import GenerationRequest  # noqa: E402

TEXT_TOKENS = 512
CLIP_TOKENS, CLIP_DIM = 257, 1280  # ViT-H/14 at 224 px: what Wan2.1 I2V's cross-attention sees
WAN_14B = WanTransformerConfig()  # diffusers' defaults are the 14B's
# The published Wan2.2 VAE config (Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json).
WAN22_VAE = {**TINY_VAE22, "base_dim": 160, "decoder_base_dim": 256, "num_res_blocks": 2}


@dataclass(frozen=True)
class Bench:
    """One model: its transformer config, VAE config, and diffusers' pipeline settings."""

    config: WanTransformerConfig
    vae: dict
    steps: int  # enough for two timed steps, and for two-expert models steps of both experts
    image: bool
    boundary_ratio: float | None = None
    expand_timesteps: bool = False


BENCHES = {
    "wan2.2-ti2v-5b": Bench(
        WanTransformerConfig(num_attention_heads=24, ffn_dim=14336, num_layers=30, in_channels=48, out_channels=48),
        WAN22_VAE,
        steps=3,
        image=True,
        expand_timesteps=True,
    ),
    "wan2.1-i2v-14b-480p": Bench(
        replace(WAN_14B, in_channels=36, image_dim=CLIP_DIM, added_kv_proj_dim=WAN_14B.inner_dim),
        {},
        steps=3,
        image=True,
    ),
    # 4 steps at flow shift 12 (5): timesteps 999, 973, 923, 800 (999, 937, 833, 625) cross the
    # boundary 875 (900) once, so both experts run.
    "wan2.2-t2v-a14b": Bench(WAN_14B, {}, steps=4, image=False, boundary_ratio=0.875),
    "wan2.2-i2v-a14b": Bench(replace(WAN_14B, in_channels=36), {}, steps=4, image=True, boundary_ratio=0.9),
}


def first_frame(width: int, height: int) -> object:
    """A synthetic photo-like first frame (gradients and noise), as a PIL image."""
    from PIL import Image

    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    noise = np.random.default_rng(0).random((height, width, 3)) * 0.2
    return Image.fromarray(((np.stack([xx, yy, 1 - xx * yy], axis=-1) * 0.8 + noise) * 255).astype(np.uint8))


def ours_on(reference: torch.nn.Module, config: WanTransformerConfig) -> WanTransformer3DModel:
    """Our model on the very same weight tensors (shared, not copied: fusing makes new ones)."""
    with torch.device("meta"):
        model = WanTransformer3DModel(config)
    model.load_state_dict(reference.state_dict(), strict=True, assign=True)
    device = next(reference.parameters()).device
    return model.to(device).eval().requires_grad_(False)


def bench_model(name: str, bench: Bench, device: torch.device, dtype: torch.dtype, tiny: bool) -> tuple[dict, dict]:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline

    spec = get_spec(name)
    config = bench.config
    if tiny:  # the same code paths at toy sizes (CPU smoke run)
        config = replace(config, num_attention_heads=2, attention_head_dim=16, ffn_dim=64, num_layers=2, text_dim=32)
        if config.image_dim is not None:
            config = replace(config, image_dim=24, added_kv_proj_dim=config.inner_dim)
    width, height = (64, 64) if tiny else (spec.default_width, spec.default_height)
    frames = 9 if tiny else spec.default_frames
    vae_config = bench.vae if not tiny else (TINY_VAE22 if bench.expand_timesteps else TINY_VAE)
    details: dict[str, object] = {"model": name}

    # 0. Same weights, embeddings, image and noise for both.
    experts = [diffusers_transformer(config, dtype, device)]
    if bench.boundary_ratio is not None:
        torch.manual_seed(1)
        experts.append(diffusers_transformer(replace(config), dtype, device))
        with torch.no_grad():  # a second seed: two different experts
            for param in experts[1].parameters():
                param.mul_(1.01)
    torch.manual_seed(2)
    with torch.device(device):
        vae = AutoencoderKLWan(**vae_config).float().eval().requires_grad_(False)
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=spec.flow_shift
    )
    generator = torch.Generator(device).manual_seed(3)
    prompt = torch.randn(1, TEXT_TOKENS, config.text_dim, device=device, generator=generator).to(dtype)
    negative = torch.randn(1, TEXT_TOKENS, config.text_dim, device=device, generator=generator).to(dtype)
    image_embeds = None
    if config.image_dim is not None:
        tokens = 17 if tiny else CLIP_TOKENS
        image_embeds = torch.randn(1, tokens, config.image_dim, device=device, generator=generator).to(dtype)
    z_dim, spatial = vae.config.z_dim, vae.config.scale_factor_spatial
    latent_shape = (1, z_dim, (frames - 1) // 4 + 1, height // spatial, width // spatial)
    noise = torch.randn(latent_shape, device=device, generator=generator, dtype=torch.float32)
    image = first_frame(width, height) if bench.image else None
    request = GenerationRequest(
        prompt="-", width=width, height=height, num_frames=frames, num_inference_steps=bench.steps,
        guidance_scale=spec.default_guidance, guidance_scale_2=spec.default_guidance_2, seed=0,
        fps=spec.default_fps, image=image,
    )  # fmt: skip

    # 1. diffusers
    two = bench.boundary_ratio is not None
    common = dict(
        vae=vae,
        scheduler=scheduler,
        transformer=experts[0],
        transformer_2=experts[1] if two else None,
        boundary_ratio=bench.boundary_ratio,
        expand_timesteps=bench.expand_timesteps,
    )
    if bench.image:
        pipe = WanImageToVideoPipeline(
            tokenizer=None, text_encoder=None, image_processor=None, image_encoder=None, **common
        )
    else:
        pipe = WanPipeline(tokenizer=None, text_encoder=None, **common)
    pipe.set_progress_bar_config(disable=True)
    step_ends: list[float] = []

    def mark(pipeline, index, t, kwargs):  # type: ignore[no-untyped-def]
        sync(device)
        step_ends.append(time.perf_counter())
        return {}

    kwargs: dict[str, object] = {"image": image} if bench.image else {}
    if image_embeds is not None:  # diffusers refuses image + image_embeds: hand it ours as its CLIP output
        pipe.encode_image = lambda image, device: image_embeds
    if two:
        kwargs["guidance_scale_2"] = spec.default_guidance_2
    with torch.inference_mode():
        expected = pipe(
            prompt_embeds=prompt, negative_prompt_embeds=negative, latents=noise.clone(), height=height, width=width,
            num_frames=frames, num_inference_steps=bench.steps, guidance_scale=spec.default_guidance,
            output_type="latent", return_dict=False, callback_on_step_end=mark, **kwargs,
        )[0]  # fmt: skip
    diffusers_s = (step_ends[-1] - step_ends[0]) / (len(step_ends) - 1)
    print(f"{name}: diffusers {diffusers_s:.3f} s/step", flush=True)
    del pipe, common
    gc.collect()

    # 2. vidq, on the same tensors (diffusers' models released first, so the peak is ours alone)
    ours = [ours_on(expert, config) for expert in experts]
    experts.clear()
    gc.collect()
    for model in ours:
        optimize_transformer(model, fuse=True, compile=device.type == "cuda")
        model.set_attention_backend("auto")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    denoise = DenoisingStage(
        device, ours[0], dict(scheduler.config), transformer_2=ours[1] if two else None,
        boundary_ratio=bench.boundary_ratio, expand_timesteps=bench.expand_timesteps,
    )  # fmt: skip
    # Timed as a whole, synchronized before and after, with the one-off compile warm-up (timed by the
    # stage itself) taken out: every step counts, the first one included, so this errs against vidq.
    # Per-step progress reports are not used: a report is made once the NEXT step is queued, so
    # whenever the host waits inside a step the reported times shift by a step (an earlier version
    # of this script divided N-2 steps of time by N-1 and printed half the true time at 3 steps).
    state = PipelineState(request=request)
    state.prompt_embeds, state.negative_prompt_embeds, state.image_embeds = prompt, negative, image_embeds
    state.latents = noise.clone()
    with torch.inference_mode():
        if bench.image and (config.in_channels != config.out_channels or bench.expand_timesteps):
            ImageConditioningStage(device, vae, bench.expand_timesteps)(state)
        sync(device)
        started = time.perf_counter()
        denoise(state)
        sync(device)
    vidq_s = (time.perf_counter() - started - state.stage_timings_s.get("compile", 0.0)) / bench.steps
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else 0.0
    parity = relative_error(state.latents, expected)
    print(f"{name}: vidq {vidq_s:.3f} s/step, parity {parity:.2e}, peak {peak:.1f} GiB", flush=True)
    details.update(
        compile_s=round(state.stage_timings_s.get("compile", 0.0), 2),
        attention_backend=ours[0].blocks[0].attn1.backend,
        steps_timed=bench.steps,
    )

    if two:  # the swap the planner's "swap" placement pays at the boundary, and its plan on 80 GB
        shape = RequestShape(width=width, height=height, num_frames=frames, cfg=True)
        plan_80 = plan_memory(get_spec(name).footprint, shape, int(80 * GIB * 0.95))
        plan_h200 = plan_memory(get_spec(name).footprint, shape, int(139 * GIB * 0.95))
        del denoise, state
        swap = ComponentOffload(ours[1], device)  # now in pinned host memory
        sync(device)
        started = time.perf_counter()
        with swap.on_device():
            sync(device)
            swap_s = time.perf_counter() - started
        details.update(
            expert_swap_s=round(swap_s, 3),
            expert_bytes=swap.group.nbytes,
            plan_80gb=plan_80.describe(),
            plan_h200=plan_h200.describe(),
        )
        print(f"{name}: one expert swap {swap_s:.2f} s; 80 GB plan: {plan_80.describe()}", flush=True)

    record = {
        "bench": "model_vs_diffusers",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "date": datetime.now(UTC).date().isoformat(),
        "commit": commit(),
        "model": name,
        "size": f"{width}x{height}",
        "num_frames": frames,
        "steps": bench.steps,
        "diffusers_s_per_step": round(diffusers_s, 4),
        "vidq_s_per_step": round(vidq_s, 4),
        "speedup": round(diffusers_s / vidq_s, 4),
        "parity_rel_err": parity,
        "peak_vram_gb": round(peak, 2),
    }
    ours.clear()
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return record, details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(BENCHES), help="comma-separated registry names, in order")
    parser.add_argument("--budget-s", type=float, default=1e9, help="start no model after this many seconds")
    parser.add_argument("--tiny", action="store_true", help="toy configs (CPU smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    started = time.perf_counter()
    records: list[dict] = []
    details: dict[str, object] = {"not_run": [], "models": []}
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    stem = f"model_vs_diffusers-{device_name.split()[-1].lower()}-{datetime.now(UTC).date().isoformat()}"
    args.out.mkdir(parents=True, exist_ok=True)

    def write() -> None:  # after each model, so a run cut short keeps what it measured
        (args.out / f"{stem}.json").write_text(json.dumps(records, indent=2) + "\n")
        (args.out / f"{stem}-details.json").write_text(json.dumps(details, indent=2) + "\n")

    for name in args.models.split(","):
        if time.perf_counter() - started > args.budget_s:
            details["not_run"].append(name)  # type: ignore[union-attr]
            print(f"{name}: not run (time budget spent)", flush=True)
            write()
            continue
        record, model_details = bench_model(name, BENCHES[name], device, dtype, args.tiny)
        records.append(record)
        details["models"].append(model_details)  # type: ignore[union-attr]
        write()

    print()
    print(
        f"{'model':24}{'size':>10}{'frames':>8}{'diffusers s/step':>18}{'vidq s/step':>13}{'speedup':>9}{'parity':>10}"
    )
    for r in records:
        print(
            f"{r['model']:24}{r['size']:>10}{r['num_frames']:>8}{r['diffusers_s_per_step']:>18.3f}"
            f"{r['vidq_s_per_step']:>13.3f}{r['speedup']:>9.2f}{r['parity_rel_err']:>10.2e}"
        )
    for name in details["not_run"]:  # type: ignore[union-attr]
        print(f"{name:24} not run: the time budget was spent")


if __name__ == "__main__":
    main()
