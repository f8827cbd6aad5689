"""DiT offload and tiled VAE: step time and peak VRAM, resident vs naive vs layer-wise offload.

    python benchmarks/bench_offload.py                                   # 14B, 832x480, 81 frames, CFG batch 2
    python benchmarks/bench_offload.py --config tiny-wan --size 64x64 --frames 9 --vae-size 64x64  # CPU smoke

1. The Wan2.1-T2V-14B DiT (random weights, bf16, fused projections, compiled blocks) runs one
   forward per step on a CFG batch of two; each mode is timed over `--iters` forwards after a
   warm-up (median), peak VRAM is `max_memory_allocated` over those forwards:
   - resident: every weight on the GPU;
   - layer-wise: block weights in pinned host memory, block i+1 copied on a copy stream while
     block i computes (`engine.memory.offload.LayerwiseOffload`), no block resident;
   - naive: the same pinned weights, each block copied on the compute stream right before it
     runs (copy and compute serialise).
   Layer-wise and naive outputs are compared with the resident one (they should be identical).
2. The Wan2.1 VAE (the 1.3B's and 14B's, random weights, float32) decodes 1280x720, 81 frames
   in tiles (`engine.memory.vae_tiling`), then untiled, with peak VRAM each and the planner's
   estimate beside it.
Prints a table and writes one JSON object to benchmarks/results/ (bench = "offload").
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_engine import CONFIGS, TEXT_TOKENS, commit, random_engine_dit, sync  # noqa: E402
from engine.memory.offload import LayerwiseOffload  # noqa: E402
from engine.memory.vae_tiling import decode_tiled  # noqa: E402
from engine.models.tiny import TINY_VAE  # noqa: E402
from engine.models.wan_transformer import WanTransformer3DModel  # noqa: E402
from engine.optimize import optimize_transformer  # noqa: E402
from spec.memory import GIB, RequestShape, dit_activation_bytes, vae_decode_bytes  # noqa: E402
from spec.registry import find_spec, get_spec, parse_size  # noqa: E402


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else 0.0


def timed(fn, device: torch.device, iters: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_dit(config, dtype: torch.dtype, device: torch.device, compile: bool) -> WanTransformer3DModel:  # type: ignore[no-untyped-def]
    model = random_engine_dit(config, dtype, device)
    model.set_attention_backend("auto")
    return optimize_transformer(model, fuse=True, compile=compile)


def bench_dit(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, object]:
    config = CONFIGS[args.config]
    width, height = parse_size(args.size)
    model = build_dit(config, dtype, device, compile=args.compile)
    generator = torch.Generator(device).manual_seed(1)
    latents = torch.randn(
        2, 16, (args.frames - 1) // 4 + 1, height // 8, width // 8, generator=generator, device=device
    )
    latents = latents.to(dtype)  # [2, 16, F', H/8, W/8]: cond and uncond as one batch
    text = torch.randn(2, TEXT_TOKENS, config.text_dim, generator=generator, device=device).to(dtype)
    timestep = torch.tensor([500.0, 500.0], device=device)
    results: dict[str, object] = {}
    last: dict[str, torch.Tensor] = {}

    def forward() -> torch.Tensor:
        last["out"] = model(latents, timestep, text)
        return last["out"]

    with torch.inference_mode():
        started = time.perf_counter()
        expected = forward()  # warm-up; compiles the block graph
        sync(device)
        results["compile_and_first_forward_s"] = round(time.perf_counter() - started, 2)
        reset_peak(device)
        results["resident_s_per_step"] = timed(forward, device, args.iters)
        results["resident_peak_vram_gb"] = peak_gb(device)
        print(
            f"resident: {results['resident_s_per_step']:.3f} s/step, {results['resident_peak_vram_gb']:.1f} GB",
            flush=True,
        )

    started = time.perf_counter()
    offload = LayerwiseOffload(model.blocks, device, resident_blocks=0, prefetch=True)  # weights -> pinned host
    results["offload_setup_s"] = round(time.perf_counter() - started, 2)
    results["offloaded_gb"] = offload.offloaded_bytes / GIB
    with torch.inference_mode():
        reset_peak(device)
        forward()  # warm-up (first use of the copy stream, allocator)
        results["layerwise_s_per_step"] = timed(forward, device, args.iters)
        results["layerwise_peak_vram_gb"] = peak_gb(device)
        actual = last["out"]
        results["layerwise_max_abs_diff"] = (actual.float() - expected.float()).abs().max().item()
        print(
            f"layerwise: {results['layerwise_s_per_step']:.3f} s/step, {results['layerwise_peak_vram_gb']:.1f} GB",
            flush=True,
        )

        offload.prefetch = False
        reset_peak(device)
        results["naive_s_per_step"] = timed(forward, device, args.iters)
        results["naive_peak_vram_gb"] = peak_gb(device)
        actual = last["out"]
        results["naive_max_abs_diff"] = (actual.float() - expected.float()).abs().max().item()
        print(f"naive: {results['naive_s_per_step']:.3f} s/step, {results['naive_peak_vram_gb']:.1f} GB", flush=True)
    registered = find_spec(args.config)
    footprint = registered.footprint if registered is not None else None
    if footprint is not None:
        shape = RequestShape(width, height, args.frames, cfg=True)
        weights = footprint.dit_other_bytes + 2 * footprint.dit_block_bytes
        results["planner_layerwise_estimate_gb"] = (weights + dit_activation_bytes(footprint, shape)) / GIB
        results["planner_resident_estimate_gb"] = (footprint.dit_bytes + dit_activation_bytes(footprint, shape)) / GIB
    results["layerwise_slowdown"] = results["layerwise_s_per_step"] / results["resident_s_per_step"]  # type: ignore[operator]
    results["naive_slowdown"] = results["naive_s_per_step"] / results["resident_s_per_step"]  # type: ignore[operator]
    return results


def bench_vae(args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    from diffusers import AutoencoderKLWan

    width, height = parse_size(args.vae_size)
    torch.manual_seed(2)
    with torch.device(device):
        vae = AutoencoderKLWan(**TINY_VAE) if args.config == "tiny-wan" else AutoencoderKLWan()
    vae = vae.float().eval().requires_grad_(False)
    latents = torch.randn(1, 16, (args.frames - 1) // 4 + 1, height // 8, width // 8, device=device)
    results: dict[str, object] = {"vae_size": args.vae_size, "vae_tile_latent": args.vae_tile}
    footprint = get_spec("wan2.1-t2v-1.3b").footprint
    shape = RequestShape(width, height, args.frames, cfg=True)
    with torch.inference_mode():
        reset_peak(device)
        started = time.perf_counter()
        decode_tiled(vae, latents, args.vae_tile, args.vae_overlap)
        sync(device)
        results["vae_tiled_decode_s"] = round(time.perf_counter() - started, 2)
        results["vae_tiled_peak_vram_gb"] = peak_gb(device)
        results["vae_tiled_planner_estimate_gb"] = (
            footprint.vae_bytes + vae_decode_bytes(footprint, shape, args.vae_tile)
        ) / GIB
        print(
            f"VAE tiled {args.vae_size}: {results['vae_tiled_decode_s']} s, {results['vae_tiled_peak_vram_gb']:.1f} GB",
            flush=True,
        )
        if args.vae_untiled:
            reset_peak(device)
            started = time.perf_counter()
            vae.decode(latents, return_dict=False)
            sync(device)
            results["vae_untiled_decode_s"] = round(time.perf_counter() - started, 2)
            results["vae_untiled_peak_vram_gb"] = peak_gb(device)
            results["vae_untiled_planner_estimate_gb"] = (
                footprint.vae_bytes + vae_decode_bytes(footprint, shape, None)
            ) / GIB
            print(
                f"VAE untiled: {results['vae_untiled_decode_s']} s, {results['vae_untiled_peak_vram_gb']:.1f} GB",
                flush=True,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=CONFIGS, default="wan2.1-t2v-14b")
    parser.add_argument("--size", default="832x480")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--iters", type=int, default=2, help="timed forwards (= steps) per mode")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--vae-size", default="1280x720")
    parser.add_argument("--vae-tile", type=int, default=64, help="latent tile (x8 pixels)")
    parser.add_argument("--vae-overlap", type=int, default=8, help="latent overlap between tiles")
    parser.add_argument("--vae-untiled", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--skip-vae", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    record: dict[str, object] = {
        "bench": "offload",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "date": datetime.now(UTC).date().isoformat(),
        "commit": commit(),
        "torch": torch.__version__,
        "model": args.config,
        "size": args.size,
        "num_frames": args.frames,
        "cfg_batch": 2,
        "dtype": str(dtype).removeprefix("torch."),
        "compiled": args.compile,
        "iters": args.iters,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    device_tag = record["device"].split()[1].lower() if device.type == "cuda" else "cpu"  # type: ignore[union-attr]
    path = args.out_dir / f"offload-{args.config}-{device_tag}-{record['date']}.json"

    def write() -> None:  # after each part, so a run cut short keeps what it measured
        rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}
        path.write_text(json.dumps(rounded, indent=2) + "\n")

    record.update(bench_dit(args, device, dtype))
    write()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if not args.skip_vae:
        record.update(bench_vae(args, device))
        write()

    print()
    print(f"{'DiT, ' + args.config:34}{'s/step':>10}{'vs resident':>13}{'peak VRAM GB':>14}")
    for mode in ("resident", "naive", "layerwise"):
        seconds, peak = record[f"{mode}_s_per_step"], record[f"{mode}_peak_vram_gb"]
        ratio = seconds / record["resident_s_per_step"]  # type: ignore[operator]
        print(f"{mode:34}{seconds:>10.3f}{ratio:>12.2f}x{peak:>14.1f}")
    if "vae_tiled_peak_vram_gb" in record:
        print(f"VAE {args.vae_size} x {args.frames}: tiled {record['vae_tiled_peak_vram_gb']:.1f} GB "
              f"({record['vae_tiled_decode_s']} s)", end="")  # fmt: skip
        if "vae_untiled_peak_vram_gb" in record:
            print(f", untiled {record['vae_untiled_peak_vram_gb']:.1f} GB ({record['vae_untiled_decode_s']} s)", end="")
        print()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
