"""One job on several GPUs: per-step time of Ulysses, ring, USP and CFG parallel against one GPU.

    python benchmarks/bench_parallel.py --gpus 2                                  # 14B, 1280x720, 81 frames
    python benchmarks/bench_parallel.py --gpus 2 --config tiny-wan --size 64x64 --frames 9 --steps 2  # CPU smoke

Every run uses the same random weights (built from one seed on every rank), embeddings and noise;
the 1-GPU run is the reference for each mode's parity (relative L2 of the final latents). Each run
first generates one step (it compiles and warms up the shape), then times `--steps` steps. Writes
one object with `bench` = "parallel" for the fastest mode and one `bench` = "parallel_mode" object
per mode to a JSON file in benchmarks/results/ (named after the model, the shape unless it is the
default 1280x720x81, the GPUs and the date; rewritten after every mode, so a run cut short keeps
what it measured; a mode that fails is recorded with its error), and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_engine import CONFIGS, TEXT_TOKENS, commit, random_engine_dit  # noqa: E402

from engine.optimize import optimize_transformer  # noqa: E402
from engine.parallel import ParallelConfig  # noqa: E402
from engine.parallel.launch import launch, rank_device  # noqa: E402
from engine.stages.denoising import DenoisingStage  # noqa: E402
from engine.stages.state import PipelineState  # noqa: E402
from spec.registry import parse_size  # noqa: E402
from spec.request import GenerationRequest  # noqa: E402


def _inputs(config_name: str, width: int, height: int, frames: int, device: torch.device):  # type: ignore[no-untyped-def]
    config = CONFIGS[config_name]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = random_engine_dit(config, dtype, device)
    generator = torch.Generator("cpu").manual_seed(2)
    pe = torch.randn(1, TEXT_TOKENS, config.text_dim, generator=generator).to(device, dtype)
    ne = torch.randn(1, TEXT_TOKENS, config.text_dim, generator=generator).to(device, dtype)
    noise = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, generator=generator).to(device)
    return model, pe, ne, noise


def run_denoising(rank: int, args: argparse.Namespace, parallel: ParallelConfig | None, out: Path | None) -> None:
    """Build the model, warm up (compile), time `args.steps` steps; rank 0 saves latents + time."""
    device = rank_device(rank)
    width, height = parse_size(args.size)
    model, pe, ne, noise = _inputs(args.config, width, height, args.frames, device)
    if parallel is not None and parallel.enabled:
        from engine.parallel.state import initialize_parallel_state

        parallel.check_heads(model.config.num_attention_heads)
        initialize_parallel_state(parallel)
        model.sequence_parallel = True
    optimize_transformer(model, fuse=True, compile=device.type == "cuda")
    stage = DenoisingStage(device, model, {**SCHEDULER, "flow_shift": args.flow_shift})
    warm_up_s = 0.0
    for steps in (1, args.steps):  # one step compiles and warms up the shape; the second run is timed
        request = GenerationRequest(
            prompt="-", width=width, height=height, num_frames=args.frames, num_inference_steps=steps,
            guidance_scale=5.0, seed=0, fps=16,
        )  # fmt: skip
        state = PipelineState(request=request, on_step=lambda info: None)
        state.prompt_embeds, state.negative_prompt_embeds, state.latents = pe, ne, noise.clone()
        with torch.inference_mode():
            stage(state)
        warm_up_s = warm_up_s or state.stage_timings_s["denoising"]
    if rank == 0 and out is not None:
        torch.save(
            {
                "latents": state.latents.cpu(),
                "s_per_step": state.stage_timings_s["denoising"] / args.steps,
                "warm_up_s": warm_up_s,  # compile + one step
                "peak_memory_gib": state.stage_peak_memory_bytes.get("denoising", 0) / 2**30,
            },
            out,
        )


SCHEDULER = {
    "_class_name": "UniPCMultistepScheduler",
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "num_train_timesteps": 1000,
}


def modes(gpus: int, heads: int) -> dict[str, ParallelConfig]:
    found = {
        "ulysses": ParallelConfig(world_size=gpus, ulysses_degree=gpus),
        "ring": ParallelConfig(world_size=gpus, ring_degree=gpus),
    }
    if gpus % 2 == 0:
        found["cfg"] = ParallelConfig(world_size=gpus, ulysses_degree=gpus // 2, cfg_degree=2)
    if gpus >= 4 and gpus % 2 == 0:
        found["usp"] = ParallelConfig(world_size=gpus, ulysses_degree=2, ring_degree=gpus // 2)
    return {name: config for name, config in found.items() if heads % config.ulysses_degree == 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--config", choices=CONFIGS, default="wan2.1-t2v-14b")
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--flow-shift", type=float, default=5.0)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="vidq-bench-parallel-"))
    single = scratch / "single.pt"
    launch(run_denoising, 1, args, None, single)  # the 1-GPU reference, in its own process like the others
    reference = torch.load(single)
    print(f"1 GPU: {reference['s_per_step']:.3f} s/step (warm-up {reference['warm_up_s']:.1f} s)", flush=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    common = {
        "device": device, "date": datetime.now(UTC).date().isoformat(), "commit": commit(), "model": args.config,
        "height": parse_size(args.size)[1], "width": parse_size(args.size)[0], "num_frames": args.frames,
        "steps": args.steps, "warm_up_s_1gpu": reference["warm_up_s"],
        "peak_memory_gib_1gpu": reference["peak_memory_gib"],
    }  # fmt: skip
    tag = "cpu" if device == "cpu" else device.split()[1].lower()
    shape = "" if (args.size, args.frames) == ("1280x720", 81) else f"-{args.size}x{args.frames}"
    path = args.out_dir / f"parallel-{args.config}{shape}-{args.gpus}x{tag}-{common['date']}.json"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    heads = CONFIGS[args.config].num_attention_heads
    rows: list[dict] = []
    for name, config in modes(args.gpus, heads).items():
        row = {
            "bench": "parallel_mode", "mode": name, "gpus": args.gpus,
            "ulysses_degree": config.ulysses_degree, "ring_degree": config.ring_degree, "cfg_degree": config.cfg_degree,
            "s_per_step_1gpu": reference["s_per_step"],
        }  # fmt: skip
        out = scratch / f"{name}.pt"
        try:
            launch(run_denoising, config.world_size, args, config, out)
        except Exception as exc:  # one broken mode must not cost the others' figures
            rows.append({**row, **common, "error": f"{type(exc).__name__}: {exc}"[-2000:]})
            print(f"{name}: FAILED {type(exc).__name__}: {exc}", flush=True)
        else:
            result = torch.load(out)
            error = ((result["latents"] - reference["latents"]).norm() / reference["latents"].norm()).item()
            row |= {
                "s_per_step": result["s_per_step"], "speedup": reference["s_per_step"] / result["s_per_step"],
                "parity_rel_err": error, "warm_up_s": result["warm_up_s"], "peak_memory_gib": result["peak_memory_gib"],
            }  # fmt: skip
            rows.append({**row, **common})
            print(f"{name}: {result['s_per_step']:.3f} s/step, parity {error:.2e}", flush=True)
        measured = [row for row in rows if "s_per_step" in row]
        best = [{**min(measured, key=lambda row: row["s_per_step"]), "bench": "parallel"}] if measured else []
        path.write_text(json.dumps([*best, *rows], indent=2) + "\n")

    print(f"\n{'mode':10}{'gpus':>6}{'s/step':>10}{'1 GPU':>10}{'speed-up':>10}{'parity':>12}")
    for row in rows:
        if "s_per_step" not in row:
            print(f"{row['mode']:10}{row['gpus']:>6}  failed: {row['error'][:200]}")
            continue
        print(f"{row['mode']:10}{row['gpus']:>6}{row['s_per_step']:>10.3f}{row['s_per_step_1gpu']:>10.3f}"
              f"{row['speedup']:>9.2f}x{row['parity_rel_err']:>12.2e}")  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
