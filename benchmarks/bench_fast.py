"""Fast modes against the lossless engine, in one process, on the same random weights.

    python benchmarks/bench_fast.py                        # Wan2.1-T2V-1.3B, 832x480x81, 50 steps, CFG; FP8 at 14B
    python benchmarks/bench_fast.py --config tiny-wan --size 64x64 --frames 9 --steps 8 --budget-frames 9 \\
        --fp8-config tiny-wan --latent-steps 4 --dtype bfloat16 --out /tmp/fast.json  # CPU smoke (FP8 emulated)
    python benchmarks/bench_fast.py --config wan2.1-t2v-14b --experts 2 --size 1280x720 --steps 40 \\
        --flow-shift 12 --budget-methods teacache,fbcache --budget-frames 21 --fp8-config "" \\
        --no-fp32-floor --latent-steps 0  # Wan2.2 T2V-A14B: two 14B experts switched at 0.875

With `--experts 2` the model is a Wan2.2 A14B-style pair (two random DiTs of `--config`, switched
at `--boundary-ratio`): the presets resolve as for A14B (no MagCache calibration: the first-block
cache, `spec.acceleration.UNCALIBRATED_PRESETS`), the cache is reset at the expert switch, FP8
quantizes both experts, and TeaCache's budget search simulates with each step's own expert and
the switch. The float32 runs (noise floor, final-latent error) are single-expert only.

Measures:
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
4. FP8's final-latent error (`fp8_latent_error`, issue 14's criterion): whole denoising runs of the
   preset model at --budget-frames, --latent-steps steps with CFG, same seed, noise and embeddings,
   in float32 (TF32 off in matmuls and cuDNN, eager, the bf16-rounded weights), bf16 and bf16 with
   FP8 linears: `fp8_latent_rel_err` (FP8 vs bf16), `bf16_vs_fp32_latent_rel_err`, their ratio
   (target <= 3) and the decoded frames' PSNR between them.

Only what the arguments ask for runs: without presets there is no headline lossless run; the
budget rows, noise floor and latent error share one runner at --budget-frames (whose lossless run
is made only for the budget rows). The results file (--out, else named by model, GPU and date in
--out-dir) is merged into when it exists (--no-merge overwrites): preset rows are replaced by
preset name, budget rows by (cache, budget), sections (`fp8_*`) whole; the rest stays, and the run
is appended to `updates` (its commit, argv, settings and what it replaced). New budget rows carry
their own commit, date, frames and steps.

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_engine import CONFIGS, TEXT_TOKENS, commit, random_engine_dit, relative_error, sync  # noqa: E402
from engine.acceleration.calibration import StepCacheCalibration, calibration_for  # noqa: E402
from engine.acceleration.fp8 import Fp8Weights  # noqa: E402
from engine.acceleration.step_cache import StepCache  # noqa: E402
from engine.models.wan_transformer import WanTransformer3DModel  # noqa: E402
from engine.optimize import optimize_transformer  # noqa: E402
from engine.stages.decoding import DecodingStage  # noqa: E402
from engine.stages.denoising import DenoisingStage  # noqa: E402
from engine.stages.state import PipelineState  # noqa: E402
from spec.acceleration import (  # noqa: E402
    ACCELERATION_FEATURES,
    PRESETS,
    UNCALIBRATED_FEATURES,
    AccelerationOptions,
    preset_options,
)
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
        self.model_2: WanTransformer3DModel | None = None  # the low-noise expert (--experts 2)
        calibration = calibration_for(args.config)
        if args.experts == 2:
            self.model_2 = random_engine_dit(config, dtype, device)  # other random weights
            optimize_transformer(self.model_2, fuse=True, compile=args.compile)
            calibration = StepCacheCalibration()  # no published numbers for A14B's experts
        torch.manual_seed(1)
        with torch.device(device):
            vae = AutoencoderKLWan(base_dim=16, z_dim=16) if args.config == "tiny-wan" else AutoencoderKLWan()
        self.vae = vae.float().eval().requires_grad_(False)
        scheduler = UniPCMultistepScheduler(
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            num_train_timesteps=1000,
            flow_shift=args.flow_shift,
        )
        self.denoise = DenoisingStage(
            device,
            self.model,
            dict(scheduler.config),
            calibration,
            transformer_2=self.model_2,
            boundary_ratio=args.boundary_ratio if self.model_2 is not None else None,
        )
        self.decode = DecodingStage(device, self.vae)
        generator = torch.Generator(device).manual_seed(2)
        self.prompt_embeds = torch.randn(1, TEXT_TOKENS, config.text_dim, device=device, generator=generator)
        self.negative_embeds = torch.randn(1, TEXT_TOKENS, config.text_dim, device=device, generator=generator)
        latent_shape = (1, 16, (frames - 1) // 4 + 1, self.height // 8, self.width // 8)
        self.noise = torch.randn(latent_shape, device=device, generator=generator, dtype=torch.float32)

    @property
    def experts(self) -> list[WanTransformer3DModel]:
        return [self.model] if self.model_2 is None else [self.model, self.model_2]

    def preset(self, name: str) -> AccelerationOptions:
        """Preset `name` as this model resolves it (A14B: the uncalibrated variants)."""
        return preset_options(name, ACCELERATION_FEATURES if self.model_2 is None else UNCALIBRATED_FEATURES)

    def enable_fp8(self) -> None:
        if self.denoise.fp8 is None:
            self.denoise.fp8 = Fp8Weights(*self.experts, emulate=self.device.type != "cuda")

    def request(self, options: AccelerationOptions, steps: int | None = None) -> GenerationRequest:
        return GenerationRequest(
            prompt="-", width=self.width, height=self.height, num_frames=self.frames,
            num_inference_steps=steps or self.args.steps, guidance_scale=5.0, seed=0, fps=16, acceleration=options,
        )  # fmt: skip

    def warm_up(self, options: AccelerationOptions, *, decode: bool) -> float | None:
        """Two steps (and a decode): compiles this shape and precision, picks cuDNN/cuBLAS plans."""
        return self.run(options, decode=decode, steps=2)["compile_s"]

    def run(
        self,
        options: AccelerationOptions,
        *,
        decode: bool = True,
        steps: int | None = None,
        denoise: DenoisingStage | None = None,
    ) -> dict:
        """Denoise (and decode) once; the compile of a new shape/precision happens in a warm-up
        inside the denoising stage and is excluded from its timing, so it is subtracted here.
        `denoise`: another model's stage (the float32 copy) on the same noise and embeddings."""
        denoise = denoise or self.denoise
        if options.fp8:
            self.enable_fp8()
        dtype = denoise.transformer.proj_out.weight.dtype
        state = PipelineState(request=self.request(options, steps), on_step=lambda info: None)
        state.prompt_embeds = self.prompt_embeds.to(dtype)
        state.negative_prompt_embeds = self.negative_embeds.to(dtype)
        state.latents = self.noise.clone()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        sync(self.device)
        started = time.perf_counter()
        denoise(state)
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

    def timestep_indicators(self) -> tuple[list[torch.Tensor], list[int]]:
        """Each step's timestep projection, as the TeaCache hook sees it (from that step's expert),
        and the steps where the low-noise expert takes over (for threshold search)."""
        from diffusers import UniPCMultistepScheduler

        scheduler = UniPCMultistepScheduler.from_config(self.denoise.scheduler_config)
        scheduler.set_timesteps(self.args.steps, device=self.device)
        text = self.prompt_embeds.to(self.model.proj_out.weight.dtype)
        out, experts = [], []
        for t in scheduler.timesteps:
            expert = 0 if self.model_2 is None or float(t) >= self.args.boundary_ratio * 1000 else 1
            _, projection, _ = self.experts[expert].condition_embedder(t.expand(2), text.expand(2, -1, -1))
            out.append(projection.unflatten(1, (6, -1)))
            experts.append(expert)
        switches = [step for step in range(1, len(experts)) if experts[step] != experts[step - 1]]
        return out, switches


def threshold_for_budget(runner: Runner, method: str, budget: float) -> tuple[float, list[int]]:
    """The smallest threshold whose simulated decisions skip at least `budget` of the steps."""
    steps = runner.args.steps
    target = round(budget * steps)
    indicators, switches = runner.timestep_indicators()
    if method != "teacache":
        indicators = [None] * steps
    calibration = runner.denoise.calibration

    def skipped(threshold: float) -> list[int]:
        options = AccelerationOptions(cache=method, threshold=threshold, **BUDGET_OPTIONS)
        return StepCache(options, calibration, steps).simulate(indicators, switches)

    low, high = 0.0, 1.0
    while len(skipped(high)) < target and high < 1e6:
        high *= 4
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if len(skipped(middle)) < target else (low, middle)
    return high, skipped(high)


def spread_schedule(steps: int, budget: float, avoid: list[int] | tuple[int, ...] = ()) -> list[int]:
    """`budget` of the steps, evenly spread between the warm-up and the final steps, leaving out
    `avoid` (an expert switch: the cache computes it whatever the schedule says)."""
    first, last = BUDGET_OPTIONS["warmup_steps"], steps - BUDGET_OPTIONS["final_steps"]
    eligible = [step for step in range(first, last) if step not in avoid]
    count = min(round(budget * steps), len(eligible))
    return sorted({eligible[int(i * len(eligible) / count)] for i in range(count)}) if count else []


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


@contextmanager
def exact_float32() -> Iterator[None]:
    """Float32 that really is float32: no TF32 in matmuls or cuDNN convolutions (restored after)."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    precision = torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
        torch.set_float32_matmul_precision(precision)


def float32_copy(runner: Runner) -> WanTransformer3DModel:
    """The runner's model with the same (bf16-rounded) weights in float32, eager, plain SDPA."""
    with torch.device("meta"):
        reference = WanTransformer3DModel(CONFIGS[runner.args.config]).fuse_projections()
    weights = {name: tensor.float() for name, tensor in runner.model.state_dict().items()}
    reference.load_state_dict(weights, strict=True, assign=True)
    return reference.to(runner.device).eval().requires_grad_(False)


def fp8_noise_floor(runner: Runner) -> dict:
    """One forward (batch 1) in float32 (TF32 off), bf16 and FP8 on the same inputs and weights."""
    model, device = runner.model, runner.device
    latents = runner.noise
    text = runner.prompt_embeds
    timestep = torch.tensor([500.0], device=device)
    dtype = model.proj_out.weight.dtype
    with torch.inference_mode():
        bf16 = model(latents.to(dtype), timestep, text.to(dtype)).float()
        reference = float32_copy(runner)  # before FP8 adds its buffers to the model
        runner.enable_fp8()
        with runner.denoise.fp8.enabled():  # type: ignore[union-attr]
            fp8 = model(latents.to(dtype), timestep, text.to(dtype)).float()
        with exact_float32():
            fp32 = reference(latents, timestep, text).float()
        del reference
    floor = relative_error(bf16, fp32)
    fp8_err = relative_error(fp8, bf16)
    return {
        "bf16_vs_fp32_rel_err": floor,
        "fp8_vs_bf16_rel_err": fp8_err,
        "fp8_vs_fp32_rel_err": relative_error(fp8, fp32),
        "fp8_error_over_floor": round(fp8_err / floor, 2) if floor else None,
    }


def fp8_latent_error(runner: Runner, steps: int, *, decode: bool) -> dict:
    """Whole denoising runs (same seed, noise, embeddings, CFG, `steps` steps) in float32 (TF32
    off, eager), in the model's dtype (bf16) and in bf16 with FP8 linears: FP8's final-latent error
    against bf16, judged against bf16's own against float32 (issue 14: at most 3x)."""
    low = str(runner.model.proj_out.weight.dtype).removeprefix("torch.")
    fp8_options = AccelerationOptions(fp8=True)
    with torch.inference_mode():
        bf16 = runner.run(PRESETS["none"], steps=steps, decode=decode)  # the runner's shape is warm
        reference = float32_copy(runner)
        stage = DenoisingStage(runner.device, reference, runner.denoise.scheduler_config, runner.denoise.calibration)
        with exact_float32():
            fp32 = runner.run(PRESETS["none"], steps=steps, decode=decode, denoise=stage)
        del stage, reference
        gc.collect()
        if runner.device.type == "cuda":
            torch.cuda.empty_cache()
        runner.enable_fp8()
        runner.warm_up(fp8_options, decode=False)  # compiles the FP8 graph outside the timed run
        fp8 = runner.run(fp8_options, steps=steps, decode=decode)
    floor = relative_error(bf16["latents"], fp32["latents"])
    fp8_err = relative_error(fp8["latents"], bf16["latents"])
    record = {
        "model": runner.args.config, "size": runner.args.size, "num_frames": runner.frames, "steps": steps,
        "guidance_scale": 5.0, "dtype": low, "fp8_precision": fp8["report"]["precision"],
        "float32": "TF32 off (matmul and cuDNN), eager, same bf16-rounded weights",
        "fp8_latent_rel_err": fp8_err, "bf16_vs_fp32_latent_rel_err": floor,
        "fp8_latent_err_over_floor": round(fp8_err / floor, 3) if floor else None,
        "target_over_floor": 3.0, "fp8_vs_fp32_latent_rel_err": relative_error(fp8["latents"], fp32["latents"]),
        "e2e_s": {"float32": round(fp32["e2e_s"], 3), "bf16": round(bf16["e2e_s"], 3), "fp8": round(fp8["e2e_s"], 3)},
    }  # fmt: skip
    if decode:
        record["frames_psnr_db"] = {
            "fp8_vs_bf16": psnr_db(fp8["frames"], bf16["frames"]),
            "bf16_vs_fp32": psnr_db(bf16["frames"], fp32["frames"]),
            "fp8_vs_fp32": psnr_db(fp8["frames"], fp32["frames"]),
        }
    return record


def tag_of(device_name: str) -> str:
    return device_name.split()[1].lower() if device_name.startswith("NVIDIA") else device_name.split()[0].lower()


# Sections of the results file that are one object each; a run replaces those it produced.
SECTIONS = ("lossless_peak_vram_gb", "fp8_noise_floor", "fp8_latent_error", "fp8_per_step")


def merged(previous: dict, results: dict, update: dict) -> dict:
    """`previous` (the results file as it was) with what this run produced put in: preset rows
    replaced by preset name, budget rows by (cache, skip budget), sections whole; everything else
    (its header, settings, the rows this run did not produce) kept. The run is listed in `updates`."""
    if not previous:
        return results
    out = dict(previous)

    def rows(key: str, identity: tuple[str, ...]) -> None:  # a replaced row keeps its place
        new = {tuple(row.get(k) for k in identity): row for row in results.get(key) or []}
        kept = [new.pop(tuple(row.get(k) for k in identity), row) for row in previous.get(key, [])]
        if kept or new:
            out[key] = kept + list(new.values())

    rows("presets", ("preset",))
    rows("skip_budgets", ("cache", "skip_budget"))
    produced = [key for key in SECTIONS if key in results]
    out.update({key: results[key] for key in produced})
    errors = {k: v for k, v in previous.get("errors", {}).items() if k not in produced}
    errors.update(results.get("errors", {}))
    out.pop("errors", None)
    if errors:
        out["errors"] = errors
    replaced = [f"presets/{row['preset']}" for row in results.get("presets", [])]
    replaced += [f"skip_budgets/{row['cache']}@{row['skip_budget']}" for row in results.get("skip_budgets", [])]
    out["updates"] = [*previous.get("updates", []), {**update, "replaced": replaced + produced}]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=CONFIGS, default="wan2.1-t2v-1.3b")
    parser.add_argument("--size", default="832x480")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--experts", type=int, choices=(1, 2), default=1,
                        help="2: a Wan2.2 A14B-style pair of --config DiTs (high / low noise)")  # fmt: skip
    parser.add_argument("--boundary-ratio", type=float, default=0.875, help="expert switch (Wan2.2 T2V-A14B's)")
    parser.add_argument("--flow-shift", type=float, default=3.0, help="the scheduler's (Wan2.2 T2V-A14B: 12)")
    parser.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                        help="the model's dtype (auto: bfloat16 on CUDA, float32 on the CPU)")  # fmt: skip
    parser.add_argument("--presets", default="balanced,fast", help="empty: no presets and no headline lossless run")
    parser.add_argument("--budgets", default="0.3,0.5", help="shares of steps skipped (empty: none)")
    parser.add_argument("--budget-methods", default="teacache,magcache,fbcache")
    parser.add_argument("--budget-frames", type=int, default=None, help="frames of the budget runs (default --frames)")
    parser.add_argument("--budget-decode", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--fp8-config", default="wan2.1-t2v-14b", help="model of the FP8 per-step run ('' skips)")
    parser.add_argument("--fp8-iters", type=int, default=2)
    parser.add_argument("--fp32-floor", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--latent-steps", type=int, default=20,
                        help="steps of the whole float32 / bf16 / FP8 runs at --budget-frames (0 skips)")  # fmt: skip
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--out", type=Path, default=None, help="results file (default: in --out-dir, named by run)")
    parser.add_argument("--merge", action=argparse.BooleanOptionalAction, default=True,
                        help="into an existing results file: replace only what this run produced")  # fmt: skip
    args = parser.parse_args()
    if args.experts == 2 and (args.fp32_floor or args.latent_steps):
        parser.error("--experts 2 takes --no-fp32-floor --latent-steps 0 (the float32 runs are single-expert)")
    if args.experts == 2 and "magcache" in args.budget_methods.split(","):
        parser.error("--experts 2: no MagCache calibration exists for A14B; --budget-methods teacache,fbcache")
    model_name = args.config if args.experts == 1 else f"{args.config}-2experts"
    if args.experts == 2 and args.config == "wan2.1-t2v-14b":
        model_name = "wan2.2-t2v-a14b"  # its experts have the 14B configuration

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    if args.compile is None:
        args.compile = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header = {"device": device_name, "date": datetime.now(UTC).date().isoformat(), "commit": commit()}
    results: dict = {"bench": "fast_mode", **header}
    budget_frames = args.budget_frames or args.frames
    preset_names = [name for name in args.presets.split(",") if name]
    budgets = [float(b) for b in args.budgets.split(",") if b]
    methods = [method for method in args.budget_methods.split(",") if method] if budgets else []
    settings = {
        "model": model_name, "size": args.size, "num_frames": args.frames, "steps": args.steps,
        "experts": args.experts, "boundary_ratio": args.boundary_ratio if args.experts == 2 else None,
        "flow_shift": args.flow_shift,
        "guidance_scale": 5.0, "dtype": str(dtype).removeprefix("torch."), "compiled": args.compile,
        "weights": "random", "e2e": "denoising + VAE decoding; text encoding left out (random prompt embeddings)",
        "budget_options": BUDGET_OPTIONS, "budget_num_frames": budget_frames,
        "budget_decode": args.budget_decode, "torch": torch.__version__,
        "preset_options": {
            name: preset_options(name, ACCELERATION_FEATURES if args.experts == 1 else UNCALIBRATED_FEATURES).to_dict()
            for name in preset_names
        },
    }  # fmt: skip
    results["settings"] = settings

    path = args.out or args.out_dir / f"fast_mode-{model_name}-{tag_of(device_name)}-{header['date']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(path.read_text()) if args.merge and path.exists() else {}
    update = {**header, "argv": sys.argv[1:], "settings": settings}

    def save() -> None:  # after every section, so a run cut short still leaves its numbers
        out = merged(previous, results, update)
        path.write_text(json.dumps(out, indent=2, default=lambda v: None) + "\n")

    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:6.1f} s] {message}", flush=True)

    runner: Runner | None = None
    lossless: dict | None = None
    with torch.inference_mode():
        # 1. Presets against the lossless run, at the headline shape (skipped without presets).
        if preset_names:
            runner = Runner(args, device, dtype, args.frames)
            settings["compile_s"] = runner.warm_up(PRESETS["none"], decode=True)
            lossless = runner.run(PRESETS["none"])
            log(f"lossless: {lossless['e2e_s']:.2f} s end to end")
            presets: list[dict] = []
            results["presets"] = presets
            results["lossless_peak_vram_gb"] = round(lossless["peak_vram_gb"], 2)
            for name in preset_names:
                options = runner.preset(name)
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
                    "bench": "fast_mode", **header, "model": model_name, "size": args.size,
                    "num_frames": args.frames, "steps": args.steps, "preset": name,
                    "lossless_e2e_s": round(lossless["e2e_s"], 3), "fast_e2e_s": round(run["e2e_s"], 3),
                    "speedup": round(lossless["e2e_s"] / run["e2e_s"], 3),
                    "steps_computed": run["report"]["steps_computed"], "fp8": options.fp8,
                    **deviation(run, lossless), "peak_vram_gb": round(run["peak_vram_gb"], 2),
                })  # fmt: skip
                log(f"{name}: {presets[-1]}")
            save()

        # 2. At --budget-frames: fixed skip budgets per method (against their own lossless run),
        # the FP8 noise floor (one forward) and FP8's final-latent error (whole runs).
        decode = args.budget_decode or args.latent_steps > 0
        if methods or args.fp32_floor or args.latent_steps:
            if runner is None or budget_frames != args.frames:
                del runner, lossless
                gc.collect()
                runner, lossless = Runner(args, device, dtype, budget_frames), None
                runner.warm_up(PRESETS["none"], decode=decode)
            if methods and lossless is None:
                lossless = runner.run(PRESETS["none"], decode=args.budget_decode)
                log(f"budget shape lossless: {lossless['e2e_s']:.2f} s")
        if methods:
            rows: list[dict] = []
            results["skip_budgets"] = rows
        for method in methods:
            assert runner is not None and lossless is not None
            for budget in budgets:
                calibration = runner.denoise.calibration
                if method == "teacache":
                    # The published polynomial is fitted to real weights; on random ones it maps the
                    # changes below zero, so no threshold would meet a budget: use the raw change.
                    runner.denoise.calibration = replace(calibration, teacache_coefficients=None)
                if method == "fbcache":
                    switches = runner.timestep_indicators()[1]
                    threshold, planned = None, spread_schedule(args.steps, budget, switches)
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
                    "num_frames": budget_frames, "steps": args.steps, "commit": header["commit"],
                    "date": header["date"],
                })  # fmt: skip
                log(f"budget {method} {budget}: {rows[-1]}")
            save()
        if args.fp32_floor:
            assert runner is not None
            try:
                results["fp8_noise_floor"] = {"num_frames": runner.frames, **fp8_noise_floor(runner)}
            except Exception as exc:
                results.setdefault("errors", {})["fp8_noise_floor"] = f"{type(exc).__name__}: {exc}"
            log(f"fp8 noise floor: {results.get('fp8_noise_floor')}")
            save()
        if args.latent_steps:
            assert runner is not None
            try:
                record = fp8_latent_error(runner, args.latent_steps, decode=decode)
                results["fp8_latent_error"] = {**header, **record}
            except Exception as exc:
                results.setdefault("errors", {})["fp8_latent_error"] = f"{type(exc).__name__}: {exc}"
            log(f"fp8 final-latent error: {results.get('fp8_latent_error')}")
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

    print_table(results)
    save()
    print(f"wrote {path}" + (" (merged into the existing file)" if previous else ""))


def print_table(results: dict) -> None:
    """What this run measured."""
    print()
    if results.get("presets"):
        print(f"{'preset':10}{'e2e s':>10}{'speedup':>9}{'computed':>10}{'latent err':>12}{'PSNR dB':>9}")
        for row in results["presets"]:
            print(
                f"{row['preset']:10}{row['fast_e2e_s']:>10.2f}{row['speedup']:>8.2f}x{row['steps_computed']:>10}"
                f"{row['latent_rel_err']:>12.2e}{row['frames_psnr_db'] or 0:>9.1f}"
            )
        print(f"{'lossless':10}{results['presets'][0]['lossless_e2e_s']:>10.2f}")
    for row in results.get("skip_budgets", []):
        psnr = f"{row['frames_psnr_db']:.1f} dB" if row["frames_psnr_db"] is not None else "-"
        print(
            f"  {row['cache']:9} budget {row['skip_budget']:.0%}: skipped {row['steps_skipped']}"
            f" (threshold {row['threshold']}), {row['lossless_s']:.2f} -> {row['fast_s']:.2f} s,"
            f" {row['speedup']:.2f}x, latent err {row['latent_rel_err']:.2e}, PSNR {psnr}"
        )
    if "fp8_noise_floor" in results:
        row = results["fp8_noise_floor"]
        floor, fp8 = row["bf16_vs_fp32_rel_err"], row["fp8_vs_bf16_rel_err"]
        print(f"FP8 one forward: FP8 vs bf16 {fp8:.2e}, bf16 vs float32 {floor:.2e}")
    if "fp8_latent_error" in results:
        row = results["fp8_latent_error"]
        print(
            f"FP8 final latents ({row['size']}x{row['num_frames']}, {row['steps']} steps, CFG): "
            f"FP8 vs {row['dtype']} {row['fp8_latent_rel_err']:.2e}, {row['dtype']} vs float32 "
            f"{row['bf16_vs_fp32_latent_rel_err']:.2e}, ratio {row['fp8_latent_err_over_floor']} (target <= 3)"
        )
        print(f"  e2e s: {row['e2e_s']}; frames PSNR dB: {row.get('frames_psnr_db')}")
    if "fp8_per_step" in results:
        row = results["fp8_per_step"]
        print(f"FP8 alone, {row['model']}: {row['bf16_step_s']:.3f} -> {row['fp8_step_s']:.3f} s/step")
        print(f"  {row['speedup']:.2f}x, FP8 vs bf16 {row['fp8_vs_bf16_rel_err']:.2e}")
    for name, error in results.get("errors", {}).items():
        print(f"ERROR {name}: {error}")


if __name__ == "__main__":
    main()
