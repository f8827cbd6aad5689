"""`generate` command: one video from the command line, with progress on stderr.

Shared by `python -m engine generate` and the service's `vidq generate` (which adds these
arguments to its own parser), so both behave the same.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import TextIO

from engine.models.locate import ModelNotInstalledError
from engine.parallel.config import ParallelConfig
from engine.progress import ProgressDisplay
from spec.acceleration import (
    acceleration_argument,
    check_acceleration,
    parse_acceleration,
    summarize_acceleration,
)
from spec.registry import (
    WAN21_T2V_1_3B,
    ModelSpec,
    SpecViolationError,
    UnknownModelError,
    find_spec,
    parse_size,
)
from spec.request import GenerationRequest
from spec.settings import ATTENTION_BACKENDS, COMPILE_MODES, OFFLOAD_MODES, VAE_TILING_MODES, EngineSettings

# Defaults for a model folder the registry does not know: those of the 1.3B model.
FALLBACK_SPEC = WAN21_T2V_1_3B
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `generate` options to `parser`; unset sampling options default to the model's spec."""
    parser.add_argument("--model", required=True, help="registry name (e.g. tiny-wan), local folder or hub id")
    parser.add_argument("--prompt", required=True, help="what the video shows")
    parser.add_argument("--negative-prompt", default="", help="what it should not show")
    parser.add_argument("--size", help="WxH, e.g. 832x480 (default: the model's)")
    parser.add_argument("--num-frames", type=int, help="4k+1 frames (default: the model's)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale; <= 1 disables it")
    parser.add_argument(
        "--guidance-2", type=float, help="two-expert models (Wan2.2 A14B): the low-noise expert's guidance"
    )
    parser.add_argument(
        "--image",
        type=Path,
        metavar="PATH",
        help="first frame for image-to-video models (scaled to cover the size, centre-cropped)",
    )
    parser.add_argument("--seed", type=int, help="default: random (printed, to reproduce the video)")
    parser.add_argument("--fps", type=int, help="frames per second of the mp4 (default: the model's)")
    parser.add_argument("--out", type=Path, default=Path("out.mp4"), help="mp4 path; a .jpg thumbnail goes beside it")
    parser.add_argument("--device", help="e.g. cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument(
        "--attention-backend", choices=ATTENTION_BACKENDS, help="default: VIDQ_ATTENTION_BACKEND or auto"
    )
    parser.add_argument("--num-gpus", type=int, default=1, help="processes for one job, one per GPU (default 1)")
    parser.add_argument("--ulysses-degree", type=int, help="Ulysses sequence-parallel degree (divides the heads)")
    parser.add_argument("--ring-degree", type=int, help="ring-attention sequence-parallel degree")
    parser.add_argument("--cfg-parallel", action="store_true", help="run the two guidance branches on different GPUs")
    parser.add_argument(
        "--offload",
        choices=OFFLOAD_MODES,
        help="where the weights live (default: VIDQ_OFFLOAD or auto = the cheapest plan that fits the GPU)",
    )
    parser.add_argument(
        "--vram-budget", type=float, metavar="GB", help="GiB the engine may use on its GPU (default: its free memory)"
    )
    parser.add_argument(
        "--vae-tiling", choices=VAE_TILING_MODES, help="tile the VAE decode (default: VIDQ_VAE_TILING or auto)"
    )
    parser.add_argument(
        "--text-encoder-on-cpu", action="store_true", default=None, help="run the text encoder on the CPU"
    )
    parser.add_argument(
        "--acceleration",
        default="none",
        help="fast modes: none (lossless), balanced, fast, or a JSON object of options "
        '(e.g. \'{"cache": "magcache", "threshold": 0.12, "fp8": true}\')',
    )
    parser.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        help="torch.compile the DiT blocks (default: VIDQ_COMPILE or auto = on CUDA only)",
    )


def _format_bytes(count: int | None) -> str:
    return "n/a (CPU)" if count is None else f"{count / 2**30:.2f} GiB"


def run_generate(args: argparse.Namespace) -> int:
    """Run the `generate` command described by `args`; returns the process exit code."""
    err = sys.stderr
    known_spec = find_spec(str(args.model))
    spec: ModelSpec = known_spec or FALLBACK_SPEC
    try:
        width, height = parse_size(args.size) if args.size else (spec.default_width, spec.default_height)
    except ValueError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_USAGE
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    request = GenerationRequest(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        width=width,
        height=height,
        num_frames=args.num_frames if args.num_frames is not None else spec.default_frames,
        num_inference_steps=args.steps if args.steps is not None else spec.default_steps,
        guidance_scale=args.guidance if args.guidance is not None else spec.default_guidance,
        seed=seed,
        fps=args.fps if args.fps is not None else spec.default_fps,
        guidance_scale_2=args.guidance_2,
    )
    if args.image is not None:
        from spec.images import load_image

        try:
            request.image = load_image(args.image, width, height)
        except OSError as exc:  # missing, unreadable or not an image
            err.write(f"error: --image {args.image}: {exc}\n")
            return EXIT_USAGE
    try:
        request.acceleration = parse_acceleration(
            acceleration_argument(args.acceleration), known_spec.acceleration if known_spec is not None else None
        )
        if known_spec is not None:
            check_acceleration(
                request.acceleration,
                supported=known_spec.acceleration,
                num_inference_steps=request.num_inference_steps,
            )
        if known_spec is not None:  # refuse before spending seconds on imports and loading
            known_spec.validate_request(request)
        if args.num_gpus > 1:
            config = ParallelConfig.from_options(
                num_gpus=args.num_gpus,
                ulysses_degree=args.ulysses_degree,
                ring_degree=args.ring_degree,
                cfg_parallel=args.cfg_parallel,
            )
            from engine.parallel.launch import launch

            err.write(f"launching {config.world_size} processes ({config}) ...\n")
            launch(_generate_on_rank, config.world_size, args, request, config)
            return EXIT_OK
        result = _generate(args, request, err, device=args.device)
    except UnknownModelError as exc:
        err.write(f"error: {exc} (or give a model folder or a Hub id)\n")
        return EXIT_USAGE
    except (SpecViolationError, ValueError) as exc:
        err.write(f"error: {exc}\n")
        return EXIT_USAGE
    except (ModelNotInstalledError, FileNotFoundError) as exc:  # the model, not the request, is missing
        err.write(f"error: {exc}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        err.write("\ninterrupted\n")
        return EXIT_INTERRUPTED

    _summarise(result, err)
    return EXIT_OK


def _generate(args: argparse.Namespace, request: GenerationRequest, err: TextIO, *, device, parallel=None):  # type: ignore[no-untyped-def]
    # Imported here so `--help` and argument errors stay instant (torch takes seconds to import).
    from engine.engine import Engine

    start = time.perf_counter()
    err.write(f"loading {args.model} ...\n")
    engine = Engine(
        args.model,
        EngineSettings(),  # the command line's edge: VIDQ_ variables, then the flags below
        device=device,
        attention_backend=args.attention_backend,
        compile=args.compile,
        parallel=parallel,
        offload=args.offload,
        vram_budget_gb=args.vram_budget,
        vae_tiling=args.vae_tiling,
        text_encoder_on_cpu=args.text_encoder_on_cpu,
    )
    err.write(
        f"loaded {engine.folder} in {time.perf_counter() - start:.1f} s on {engine.device} "
        f"({engine.dtype}, attention {engine.attention_backend}); seed {request.seed}\n"
    )
    with ProgressDisplay(err) as progress:
        return engine.generate(
            request,
            on_step=lambda info: progress.step(info.step, info.total, info.elapsed_s),
            on_stage=progress.stage,
            output_path=args.out,
        )


def _generate_on_rank(rank: int, args: argparse.Namespace, request: GenerationRequest, config: ParallelConfig) -> None:
    """One rank of `--num-gpus N`: rank 0 reports progress and writes the video."""
    import io

    from engine.parallel.launch import rank_device

    err = sys.stderr if rank == 0 else io.StringIO()
    if rank != 0:
        args = argparse.Namespace(**{**vars(args), "out": None})
    result = _generate(args, request, err, device=rank_device(rank), parallel=config)
    if rank == 0:
        _summarise(result, err)


def _summarise(result, err: TextIO) -> None:  # type: ignore[no-untyped-def]
    peaks = result.stage_peak_memory_bytes
    err.write("stage timings:" + ("                    peak memory\n" if peaks else "\n"))
    for name, seconds in result.stage_timings_s.items():
        peak = f"  {peaks[name] / 2**30:10.2f} GiB" if name in peaks else ""
        err.write(f"  {name:<20} {seconds:8.3f} s{peak}\n")
    err.write(f"  {'total':<20} {sum(result.stage_timings_s.values()):8.3f} s\n")
    err.write(f"peak memory: {_format_bytes(result.peak_memory_bytes)}\n")
    if result.memory_plan is not None:
        err.write(f"memory plan: {result.memory_plan.describe()}\n")
    err.write(summarize_acceleration(result.acceleration) + "\n")
    err.write(f"wrote {result.video_path} and {result.thumbnail_path}\n")
