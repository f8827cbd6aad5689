"""Fast modes against the lossless engine, in one process, on the same random weights.

    python benchmarks/bench_fast.py                        # Wan2.1-T2V-1.3B, 832x480x81, 50 steps, CFG; FP8 at 14B
    python benchmarks/bench_fast.py --config tiny-wan --size 64x64 --frames 9 --steps 8 \\
        --budget-frames 9 --fp8-config tiny-wan --no-fp32-floor       # a CPU smoke run (FP8 emulated)

Measures, in order:
1. Each preset end to end (denoising + VAE decoding; the text encoder is left out, see below)
   against the lossless run of the same seed: `fast_e2e_s`, `speedup`, steps computed, the final
   latents' relative L2 error and the decoded frames' PSNR against the lossless ones, peak memory.
   One JSON object per preset with exactly the keys of issue 14 (`presets`).
2. Each cache method at fixed skip budgets (`skip_budgets`): TeaCache and MagCache with the
   threshold that makes their own decisions skip the budgeted share of steps (both decide from
   what is known before the run, so the threshold is found by simulation, then the run is real);
   the first-block cache, whose decisions need the run's activations, with a forced schedule of
   evenly spread skips. With random weights a threshold means nothing, a budget does (and TeaCache
   uses the raw relative change: the published polynomial, fitted to real weights, maps random
   weights' changes below zero).
3. FP8 alone (`fp8_per_step`): one denoising step (batched CFG forward) of the Wan2.1-14B
   configuration at the same shape, compiled, bf16 against FP8 block linears, plus the FP8 output's
   error against bf16; and (`fp8_noise_floor`) at the preset model, one forward in float32 (TF32
   off), bf16 and FP8, so FP8's error is judged against the bf16 noise floor of the same run.

Left out: the text encoder (a random UMT5-XXL is 11 GB to build; prompts are random embeddings,
and the engine's embedding cache makes repeated prompts free anyway). Its time would be added to
both sides equally. Weights are random: the speed of a preset carries over to real checkpoints
(MagCache's decisions follow a calibrated schedule, not the content), its visual quality does not.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_engine import CONFIGS, TEXT_TOKENS, commit, random_engine_dit, relative_error, sync  # noqa: E402
from engine.acceleration.calibration import calibration_for  # noqa: E402
from engine.acceleration.fp8 import Fp8Weights  # noqa: E402
from engine.acceleration.step_cache import StepCache  # noqa: E402
from engine.models.wan_transformer import WanTransformer3DModel  # noqa: E402
from engine.optimize import optimize_transformer  # noqa: E402
from engine.stages.decoding import DecodingStage  # noqa: E402
from engine.stages.denoising import DenoisingStage  # noqa: E402
from engine.stages.state import PipelineState  # noqa: E402
from spec.acceleration import PRESETS, AccelerationOptions  # noqa: E402
from spec.registry import parse_size  # noqa: E402
from spec.request import GenerationRequest  # noqa: E402

GIB = 2**30
# Options of the budget runs besides the threshold: enough room for half the steps to be skipped.
BUDGET_OPTIONS = dict(warmup_steps=2, final_steps=1, max_consecutive_skips=4)


def psnr_db(frames: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR of uint8 frames against the reference frames (inf when identical)."""
    mse = (frames.float() - reference.float()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


class Runner:
    """One model, VAE, embeddings and noise; runs the denoising and decoding stages per options."""

    def __init__(self, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, frames: int) -> None:
        from diffusers import AutoencoderKLWan, UniPCMultistepScheduler

        self.device, self.args, self.frames = device, args, frames
        self.width, self.height = parse_size(args.size)
        config = CONFIGS[args.config]
        self.model = random_engine_dit(config, dtype, device)
        optimize_transformer(self.model, fuse=True, compile=args.compile)
        torch.manual_seed(1)
        with torch.device(device):
            vae = AutoencoderKLWan(base_dim=16, z_dim=16) if args.config == "tiny-wan" else AutoencoderKLWan()
        self.vae = vae.float().eval().requires_grad_(False)
        scheduler = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
        )
        self.denoise = DenoisingStage(device, self.model, dict(scheduler.config), calibration_for(args.config))
        self.decode = DecodingStage(device, self.vae)
        generator = torch.Generator(device).manual_seed(2)
        self.prompt_embeds = torch.randn(1, TEXT_TOKENS, config.text_dim, device=device, generator=generator)
        self.negative_embeds = torch.randn(1, TEXT_TOKENS, config.text_dim, device=device, generator=generator)
        latent_shape = (1, 16, (frames - 1) // 4 + 1, self.height // 8, self.width // 8)
        self.noise = torch.randn(latent_shape, device=device, generator=generator, dtype=torch.float32)

    def enable_fp8(self) -> None:
        if self.denoise.fp8 is None:
            self.denoise.fp8 = Fp8Weights(self.model, emulate=self.device.type != "cuda")

    def request(self, options: AccelerationOptions, steps: int | None = None) -> GenerationRequest:
        return GenerationRequest(
            prompt="-", width=self.width, height=self.height, num_frames=self.frames,
            num_inference_steps=steps or self.args.steps, guidance_scale=5.0, seed=0, fps=16, acceleration=options,
        )  # fmt: skip

    def warm_up(self, options: AccelerationOptions, *, decode: bool) -> float | None:
        """Two steps (and a decode): compiles this shape and precision, picks cuDNN/cuBLAS plans."""
        return self.run(options, decode=decode, steps=2)["compile_s"]

    def run(self, options: AccelerationOptions, *, decode: bool = True, steps: int | None = None) -> dict:
        """Denoise (and decode) once; the compile of a new shape/precision happens in a warm-up
        inside the denoising stage and is excluded from its timing, so it is subtracted here."""
        if options.fp8:
            self.enable_fp8()
        state = PipelineState(request=self.request(options, steps), on_step=lambda info: None)
        state.prompt_embeds = self.prompt_embeds.to(self.model.proj_out.weight.dtype)
        state.negative_prompt_embeds = self.negative_embeds.to(self.model.proj_out.weight.dtype)
        state.latents = self.noise.clone()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        sync(self.device)
        started = time.perf_counter()
        self.denoise(state)
        if decode:
            self.decode(state)
        sync(self.device)
        elapsed = time.perf_counter() - started - state.stage_timings_s.get("compile", 0.0)
        return {
            "e2e_s": elapsed,
            "latents": state.latents,
            "frames": torch.from_numpy(state.frames) if decode else None,
            "report": state.acceleration,
            "peak_vram_gb": torch.cuda.max_memory_allocated(self.device) / GIB if self.device.type == "cuda" else 0.0,
            "compile_s": state.stage_timings_s.get("compile"),
        }

    def timestep_indicators(self) -> list[torch.Tensor]:
        """Each step's timestep projection, as the TeaCache hook sees it (for threshold search)."""
        from diffusers import UniPCMultistepScheduler

        scheduler = UniPCMultistepScheduler.from_config(self.denoise.scheduler_config)
        scheduler.set_timesteps(self.args.steps, device=self.device)
        text = self.prompt_embeds.to(self.model.proj_out.weight.dtype)
        out = []
        for t in scheduler.timesteps:
            _, projection, _ = self.model.condition_embedder(t.expand(2), text.expand(2, -1, -1))
            out.append(projection.unflatten(1, (6, -1)))
        return out


def threshold_for_budget(runner: Runner, method: str, budget: float) -> tuple[float, list[int]]:
    """The smallest threshold whose simulated decisions skip at least `budget` of the steps."""
    steps = runner.args.steps
    target = round(budget * steps)
    indicators = runner.timestep_indicators() if method == "teacache" else [None] * steps
    calibration = runner.denoise.calibration

    def skipped(threshold: float) -> list[int]:
        options = AccelerationOptions(cache=method, threshold=threshold, **BUDGET_OPTIONS)
        return StepCache(options, calibration, steps).simulate(indicators)

    low, high = 0.0, 1.0
    while len(skipped(high)) < target and high < 1e6:
        high *= 4
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if len(skipped(middle)) < target else (low, middle)
    return high, skipped(high)


def spread_schedule(steps: int, budget: float) -> list[int]:
    """`budget` of the steps, evenly spread between the warm-up and the final steps."""
    first, last = BUDGET_OPTIONS["warmup_steps"], steps - BUDGET_OPTIONS["final_steps"]
    count = min(round(budget * steps), last - first)
    return sorted({first + int(i * (last - first) / count) for i in range(count)}) if count else []


def deviation(run: dict, lossless: dict) -> dict:
    return {
        "latent_rel_err": relative_error(run["latents"], lossless["latents"]),
        "frames_psnr_db": psnr_db(run["frames"], lossless["frames"]) if run["frames"] is not None else None,
    }


def fp8_per_step(config_name: str, args: argparse.Namespace, device: torch.device, frames: int) -> dict:
    """One batched-CFG forward (a denoising step's transformer work), bf16 vs FP8 block linears."""
    config = CONFIGS[config_name]
    width, height = parse_size(args.size)
    model = random_engine_dit(config, torch.bfloat16 if device.type == "cuda" else torch.float32, device)
    optimize_transformer(model, fuse=True, compile=args.compile)
    dtype = model.proj_out.weight.dtype
    generator = torch.Generator(device).manual_seed(3)
    latents = torch.randn(2, 16, (frames - 1) // 4 + 1, height // 8, width // 8, device=device, generator=generator)
    text = torch.randn(2, TEXT_TOKENS, config.text_dim, device=device, generator=generator)
    latents, text, timestep = latents.to(dtype), text.to(dtype), torch.tensor([500.0, 500.0], device=device)

    def timed(iters: int) -> tuple[float, float, torch.Tensor]:
        sync(device)
        started = time.perf_counter()
        out = model(latents, timestep, text)  # compiles this shape and precision
        sync(device)
        first = time.perf_counter() - started
        times = []
        for _ in range(iters):
            sync(device)
            started = time.perf_counter()
            out = model(latents, timestep, text)
            sync(device)
            times.append(time.perf_counter() - started)
        return sorted(times)[len(times) // 2], first, out

    with torch.inference_mode():
        bf16_s, bf16_first_s, bf16_out = timed(args.fp8_iters)
        started = time.perf_counter()
        weights = Fp8Weights(model, emulate=device.type != "cuda")
        sync(device)
        quantize_s = time.perf_counter() - started
        with weights.enabled():
            fp8_s, fp8_first_s, fp8_out = timed(args.fp8_iters)
    record = {
        "model": config_name,
        "size": args.size,
        "num_frames": frames,
        "batch": 2,
        "bf16_step_s": round(bf16_s, 4),
        "fp8_step_s": round(fp8_s, 4),
        "speedup": round(bf16_s / fp8_s, 3),
        "fp8_vs_bf16_rel_err": relative_error(fp8_out, bf16_out),
        "quantize_weights_s": round(quantize_s, 3),
        "first_call_s": {"bf16": round(bf16_first_s, 2), "fp8": round(fp8_first_s, 2)},
    }
    model = weights = bf16_out = fp8_out = None  # free the 14B model before returning
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return record


def fp8_noise_floor(runner: Runner) -> dict:
    """One forward (batch 1) in float32 (TF32 off), bf16 and FP8 on the same inputs and weights."""
    model, device = runner.model, runner.device
    latents = runner.noise
    text = runner.prompt_embeds
    timestep = torch.tensor([500.0], device=device)
    dtype = model.proj_out.weight.dtype
    with torch.inference_mode():
        bf16 = model(latents.to(dtype), timestep, text.to(dtype)).float()
        runner.enable_fp8()
        with runner.denoise.fp8.enabled():  # type: ignore[union-attr]
            fp8 = model(latents.to(dtype), timestep, text.to(dtype)).float()
        allow_tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        with torch.device("meta"):
            reference = WanTransformer3DModel(CONFIGS[runner.args.config]).fuse_projections()
        weights = {name: tensor.float() for name, tensor in model.state_dict().items()}  # the bf16 values
        reference.load_state_dict(weights, strict=True, assign=True)
        reference = reference.to(device).eval()
        fp32 = reference(latents, timestep, text).float()
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = True
        del reference
    floor = relative_error(bf16, fp32)
    fp8_err = relative_error(fp8, bf16)
    return {
        "bf16_vs_fp32_rel_err": floor,
        "fp8_vs_bf16_rel_err": fp8_err,
        "fp8_vs_fp32_rel_err": relative_error(fp8, fp32),
        "fp8_error_over_floor": round(fp8_err / floor, 2) if floor else None,
    }


def tag_of(device_name: str) -> str:
    return device_name.split()[1].lower() if device_name.startswith("NVIDIA") else device_name.split()[0].lower()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=CONFIGS, default="wan2.1-t2v-1.3b")
    parser.add_argument("--size", default="832x480")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--presets", default="balanced,fast")
    parser.add_argument("--budgets", default="0.3,0.5", help="shares of steps skipped (empty: none)")
    parser.add_argument("--budget-methods", default="teacache,magcache,fbcache")
    parser.add_argument("--budget-frames", type=int, default=None, help="frames of the budget runs (default --frames)")
    parser.add_argument("--budget-decode", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--fp8-config", default="wan2.1-t2v-14b", help="model of the FP8 per-step run ('' skips)")
    parser.add_argument("--fp8-iters", type=int, default=2)
    parser.add_argument("--fp32-floor", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.compile is None:
        args.compile = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header = {"device": device_name, "date": datetime.now(UTC).date().isoformat(), "commit": commit()}
    results: dict = {"bench": "fast_mode", **header}
    settings = {
        "model": args.config, "size": args.size, "num_frames": args.frames, "steps": args.steps,
        "guidance_scale": 5.0, "dtype": str(dtype).removeprefix("torch."), "compiled": args.compile,
        "weights": "random", "e2e": "denoising + VAE decoding; text encoding left out (random prompt embeddings)",
        "budget_options": BUDGET_OPTIONS, "budget_num_frames": args.budget_frames or args.frames,
        "budget_decode": args.budget_decode, "torch": torch.__version__,
    }  # fmt: skip
    results["settings"] = settings

    path = args.out_dir / f"fast_mode-{args.config}-{tag_of(device_name)}-{header['date']}.json"
    args.out_dir.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every section, so a run cut short still leaves its numbers
        path.write_text(json.dumps(results, indent=2, default=lambda v: None) + "\n")

    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:6.1f} s] {message}", flush=True)

    # 1. Presets against the lossless run, at the headline shape.
    runner = Runner(args, device, dtype, args.frames)
    with torch.inference_mode():
        settings["compile_s"] = runner.warm_up(PRESETS["none"], decode=True)
        lossless = runner.run(PRESETS["none"])
        log(f"lossless: {lossless['e2e_s']:.2f} s end to end")
        presets = []
        results["presets"] = presets
        results["lossless_peak_vram_gb"] = round(lossless["peak_vram_gb"], 2)
        for name in filter(None, args.presets.split(",")):
            options = PRESETS[name]
            try:
                if options.fp8:  # compile the FP8 graph outside the timed run
                    runner.enable_fp8()
                    runner.warm_up(replace(options, cache=None), decode=False)
                run = runner.run(options)
            except Exception as exc:  # record and go on: the other measurements still count
                results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
                log(f"{name} failed: {exc}")
                continue
            presets.append({
                "bench": "fast_mode", **header, "model": args.config, "size": args.size,
                "num_frames": args.frames, "steps": args.steps, "preset": name,
                "lossless_e2e_s": round(lossless["e2e_s"], 3), "fast_e2e_s": round(run["e2e_s"], 3),
                "speedup": round(lossless["e2e_s"] / run["e2e_s"], 3),
                "steps_computed": run["report"]["steps_computed"], "fp8": options.fp8,
                **deviation(run, lossless), "peak_vram_gb": round(run["peak_vram_gb"], 2),
            })  # fmt: skip
            log(f"{name}: {presets[-1]}")
        save()

        # 2. Fixed skip budgets per method (their own shape when --budget-frames differs), and
        # the FP8 noise floor on that runner.
        budgets = [float(b) for b in args.budgets.split(",") if b]
        rows: list[dict] = []
        results["skip_budgets"] = rows
        if (args.budget_frames or args.frames) != args.frames:
            del runner, lossless
            gc.collect()
            runner = Runner(args, device, dtype, args.budget_frames)
            runner.warm_up(PRESETS["none"], decode=args.budget_decode)
            lossless = runner.run(PRESETS["none"], decode=args.budget_decode)
            log(f"budget shape lossless: {lossless['e2e_s']:.2f} s")
        if args.fp32_floor:
            try:
                results["fp8_noise_floor"] = {"num_frames": runner.frames, **fp8_noise_floor(runner)}
            except Exception as exc:
                results.setdefault("errors", {})["fp8_noise_floor"] = f"{type(exc).__name__}: {exc}"
            log(f"fp8 noise floor: {results.get('fp8_noise_floor')}")
        for method in filter(None, args.budget_methods.split(",")) if budgets else ():
            for budget in budgets:
                calibration = runner.denoise.calibration
                if method == "teacache":
                    # The published polynomial is fitted to real weights; on random ones it maps the
                    # changes below zero, so no threshold would meet a budget: use the raw change.
                    runner.denoise.calibration = replace(calibration, teacache_coefficients=None)
                if method == "fbcache":
                    threshold, planned = None, spread_schedule(args.steps, budget)
                    options = AccelerationOptions(cache=method, skip_steps=tuple(planned), **BUDGET_OPTIONS)
                else:
                    threshold, planned = threshold_for_budget(runner, method, budget)
                    options = AccelerationOptions(cache=method, threshold=threshold, **BUDGET_OPTIONS)
                run = runner.run(options, decode=args.budget_decode)
                runner.denoise.calibration = calibration
                rows.append({
                    "cache": method, "skip_budget": budget, "decided_by": "forced" if threshold is None else "method",
                    "teacache_rescaling": "raw change" if method == "teacache" else None,
                    "threshold": threshold, "steps_skipped": run["report"]["steps_skipped"],
                    "skipped_steps": run["report"]["skipped_steps"],
                    "planned_matches_run": planned == run["report"]["skipped_steps"],
                    "lossless_s": round(lossless["e2e_s"], 3), "fast_s": round(run["e2e_s"], 3),
                    "speedup": round(lossless["e2e_s"] / run["e2e_s"], 3), **deviation(run, lossless),
                })  # fmt: skip
                log(f"budget {method} {budget}: {rows[-1]}")
        save()
        del runner, lossless
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # 3. FP8 alone at the 14B configuration.
    if args.fp8_config:
        try:
            results["fp8_per_step"] = fp8_per_step(args.fp8_config, args, device, args.frames)
        except Exception as exc:
            results.setdefault("errors", {})["fp8_per_step"] = f"{type(exc).__name__}: {exc}"
        log(f"fp8 per step: {results.get('fp8_per_step')}")
        save()

    print()
    print(f"{'preset':10}{'e2e s':>10}{'speedup':>9}{'computed':>10}{'latent err':>12}{'PSNR dB':>9}")
    for row in results["presets"]:
        print(
            f"{row['preset']:10}{row['fast_e2e_s']:>10.2f}{row['speedup']:>8.2f}x{row['steps_computed']:>10}"
            f"{row['latent_rel_err']:>12.2e}{row['frames_psnr_db'] or 0:>9.1f}"
        )
    print(f"{'lossless':10}{results['presets'][0]['lossless_e2e_s'] if results['presets'] else 0:>10.2f}")
    for row in results["skip_budgets"]:
        print(
            f"  {row['cache']:9} budget {row['skip_budget']:.0%}: skipped {row['steps_skipped']}, "
            f"{row['speedup']:.2f}x, latent err {row['latent_rel_err']:.2e}, PSNR {row['frames_psnr_db']}"
        )
    for name, error in results.get("errors", {}).items():
        print(f"ERROR {name}: {error}")
    if "fp8_per_step" in results:
        row = results["fp8_per_step"]
        print(f"FP8 alone, {row['model']}: {row['bf16_step_s']:.3f} -> {row['fp8_step_s']:.3f} s/step")
        print(f"  {row['speedup']:.2f}x, FP8 vs bf16 {row['fp8_vs_bf16_rel_err']:.2e}")

    save()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
