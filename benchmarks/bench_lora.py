"""LoRA adapters on the engine: switching cost, per-step cost of each mode, and a distilled preset.

    python benchmarks/bench_lora.py                       # H200: Wan2.1-14B shapes, rank 64, then the 1.3B preset
    python benchmarks/bench_lora.py --config tiny-wan --size 64x64 --frames 9 --preset-config tiny-wan \\
        --preset-size 64x64 --preset-frames 9          # a CPU smoke run

Part 1, on one DiT with random weights (fused projections, GELU epilogue, compiled blocks, the
engine's path) and two random rank-`--rank` adapters on every block linear:
- `base_s_per_step`: no adapter;
- `fused_s_per_step`: an adapter merged into the weights;
- `runtime_s_per_step`: the same adapter in the runtime slots (its own compiled variant);
- `switch_s`: switching from adapter A to adapter B in the mode the engine picks for a resident
  model ("fused": restore the originals, merge B), with the runtime switch beside it;
- the fused and runtime outputs are compared (relative error), and the base output after
  restoring must be bit-identical to the first (`restored_bitwise`).
Part 2, the distillation preset end to end: Wan2.1-1.3B shapes, a rank-64 adapter in the
LightX2V layout (fused), 4 steps, guidance 1 (one transformer pass per step), flow shift 5,
text encoding (UMT5-XXL shapes, random) + denoising + VAE decoding, timed after a warm-up run.

Times are medians over `--iters` after a warm-up, synchronised. The baseline (no adapter) is
measured in the same run, and each mode is reported as a ratio to it.
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

from benchmarks.bench_engine import CONFIGS, TEXT_TOKENS, building_in, commit, random_engine_dit, sync  # noqa: E402
from engine.lora.adapter import adapter_from_tensors  # noqa: E402
from engine.lora.apply import LoraApplier  # noqa: E402
from engine.lora.runtime import install_runtime_slots  # noqa: E402
from engine.lora.synthetic import random_adapter  # noqa: E402
from engine.optimize import optimize_transformer  # noqa: E402
from spec.lora_keys import DiTShape  # noqa: E402
from spec.registry import parse_size  # noqa: E402

GIB = 2**30


def timed(fn, device: torch.device, iters: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def once(fn, device: torch.device) -> float:  # type: ignore[no-untyped-def]
    return timed(fn, device, 1)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def peak_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else 0.0


def bench_switch_and_steps(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, object]:
    config = CONFIGS[args.config]
    width, height = parse_size(args.size)
    model = random_engine_dit(config, dtype, device)
    model.set_attention_backend("auto")
    model.fuse_projections()
    install_runtime_slots(model, args.rank)  # the runtime mode's slots (inactive = the plain path)
    optimize_transformer(model, fuse=True, compile=device.type == "cuda")
    dit = DiTShape.from_config(config.to_dict())
    adapters = [
        adapter_from_tensors(name, random_adapter(dit, args.rank, "wan", seed=seed, dtype=dtype))
        for name, seed in (("A", 1), ("B", 2))
    ]
    generator = torch.Generator(device).manual_seed(3)
    latents = torch.randn(
        args.batch, 16, (args.frames - 1) // 4 + 1, height // 8, width // 8, generator=generator, device=device
    ).to(dtype)  # [B, 16, F', H/8, W/8]
    text = torch.randn(args.batch, TEXT_TOKENS, config.text_dim, generator=generator, device=device).to(dtype)
    timestep = torch.full((args.batch,), 500.0, device=device)
    out: dict[str, torch.Tensor] = {}

    def forward() -> None:
        out["last"] = model(latents, timestep, text)

    results: dict[str, object] = {}
    with torch.inference_mode():
        results["base_compile_s"] = round(once(forward, device), 3)  # compiles the plain graph
        base = out["last"].clone()
        results["base_s_per_step"] = timed(forward, device, args.iters)
        # What the engine keeps free beyond its plan holds the originals of fused weights.
        spare = torch.cuda.mem_get_info(device)[0] - 8 * GIB if device.type == "cuda" else 0
        applier = LoraApplier(model, device, device_backup_bytes=max(0, spare))
        print(f"base: {results['base_s_per_step']:.3f} s/step", flush=True)

        results["fused_first_apply_s"] = once(lambda: applier.apply([(adapters[0], 1.0)], "fused"), device)
        forward()  # warm-up
        results["fused_s_per_step"] = timed(forward, device, args.iters)
        fused_a = out["last"].clone()
        results["fused_switch_s"] = once(lambda: applier.apply([(adapters[1], 1.0)], "fused"), device)
        print(f"fused: {results['fused_s_per_step']:.3f} s/step, switch {results['fused_switch_s']:.3f} s", flush=True)

        results["runtime_first_apply_s"] = once(lambda: applier.apply([(adapters[0], 1.0)], "runtime"), device)
        results["runtime_compile_s"] = round(once(forward, device), 3)  # the "LoRA on" variant, once
        results["runtime_s_per_step"] = timed(forward, device, args.iters)
        results["fused_vs_runtime_rel_err"] = relative_error(out["last"], fused_a)
        results["runtime_switch_s"] = once(lambda: applier.apply([(adapters[1], 1.0)], "runtime"), device)
        print(
            f"runtime: {results['runtime_s_per_step']:.3f} s/step, switch {results['runtime_switch_s']:.3f} s",
            flush=True,
        )

        applier.apply([], "fused")
        forward()
        results["restored_bitwise"] = bool(torch.equal(out["last"], base))
        results["lora_effect_rel"] = relative_error(fused_a, base)
    results["peak_vram_gb"] = peak_gb(device)
    results["fused_overhead"] = results["fused_s_per_step"] / results["base_s_per_step"]  # type: ignore[operator]
    results["runtime_overhead"] = results["runtime_s_per_step"] / results["base_s_per_step"]  # type: ignore[operator]
    results["chosen_mode"] = "fused"  # engine.Engine._lora_mode for a resident model
    results["switch_s"] = results["fused_switch_s"]
    return results  # the model and its backups go with this frame


def bench_distilled_preset(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, object]:
    """Text encoding + 4 steps at guidance 1 with a fused distillation adapter + VAE decode."""
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    from engine.models.components import WanComponents
    from engine.models.tiny import SCHEDULER, TINY_TEXT_ENCODER, TINY_VAE, write_tiny_wan
    from engine.pipelines.wan_t2v import WanT2VPipeline
    from spec.request import GenerationRequest

    config = CONFIGS[args.preset_config]
    width, height = parse_size(args.preset_size)
    tiny = args.preset_config == "tiny-wan"
    tokenizer = AutoTokenizer.from_pretrained(write_tiny_wan(Path(args.work_dir) / "tiny-wan") / "tokenizer")
    model = random_engine_dit(config, dtype, device)
    model.set_attention_backend("auto")
    with building_in(dtype, device):
        encoder_config = (
            UMT5Config(vocab_size=len(tokenizer), **TINY_TEXT_ENCODER)
            if tiny
            else UMT5Config(  # UMT5-XXL, as in Wan2.1's text_encoder/config.json
                vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", dropout_rate=0.0,
            )
        )  # fmt: skip
        text_encoder = UMT5EncoderModel(encoder_config).eval().requires_grad_(False)
    with torch.device(device):
        torch.manual_seed(4)
        vae = (AutoencoderKLWan(**TINY_VAE) if tiny else AutoencoderKLWan()).float().eval().requires_grad_(False)
    optimize_transformer(model, fuse=True, compile=device.type == "cuda")
    components = WanComponents(model, vae, text_encoder, tokenizer, dict(SCHEDULER))
    pipeline = WanT2VPipeline(components, device, args.preset_config)
    dit = DiTShape.from_config(config.to_dict())
    distill = adapter_from_tensors("distill", random_adapter(dit, args.rank, "distill", seed=5, dtype=dtype))
    applier = LoraApplier(model, device)
    results: dict[str, object] = {}
    results["preset_apply_s"] = once(lambda: applier.apply([(distill, 1.0)], "fused"), device)
    prompts = iter(f"a red fox runs through fresh snow, take {i}" for i in range(100))  # a new prompt each run

    def render() -> dict[str, float]:
        request = GenerationRequest(
            prompt=next(prompts), width=width, height=height, num_frames=args.preset_frames,
            num_inference_steps=4, guidance_scale=1.0, seed=0, fps=16, flow_shift=5.0,
        )  # fmt: skip
        result = pipeline(request)
        return result.stage_timings_s

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    results["preset_first_run_s"] = once(render, device)  # compiles the blocks for this shape
    timings: dict[str, float] = {}

    def timed_render() -> None:
        timings.update(render())

    results["distill_e2e_s"] = timed(timed_render, device, args.iters)
    results["distill_stage_s"] = {str(name): round(s, 3) for name, s in timings.items()}
    results["distill_peak_vram_gb"] = peak_gb(device)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=CONFIGS, default="wan2.1-t2v-14b")
    parser.add_argument("--size", default="832x480")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--batch", type=int, default=1, help="1: guidance 1 (no CFG); 2: CFG as one batch")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--preset-config", choices=CONFIGS, default="wan2.1-t2v-1.3b")
    parser.add_argument("--preset-size", default="832x480")
    parser.add_argument("--preset-frames", type=int, default=81)
    parser.add_argument("--skip-preset", action="store_true")
    parser.add_argument("--work-dir", default="/tmp/vidq-bench-lora")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/lora-<config>-<device>-<date>.json")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    record: dict[str, object] = {
        "bench": "lora",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "date": datetime.now(UTC).date().isoformat(),
        "commit": commit(),
        "torch": torch.__version__,
        "model": args.config,
        "rank": args.rank,
        "size": args.size,
        "num_frames": args.frames,
        "batch": args.batch,
        "dtype": str(dtype).removeprefix("torch."),
        "iters": args.iters,
    }
    device_tag = record["device"].split()[1].lower() if device.type == "cuda" else "cpu"  # type: ignore[union-attr]
    path = args.out or ROOT / "benchmarks" / "results" / f"lora-{args.config}-{device_tag}-{record['date']}.json"

    def write() -> None:  # after each part, so a run cut short keeps what it measured
        rounded = {
            k: round(v, 4) if isinstance(v, float) and not k.endswith("rel_err") else v for k, v in record.items()
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rounded, indent=2) + "\n")

    record.update(bench_switch_and_steps(args, device, dtype))
    write()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if not args.skip_preset:
        record.update(
            {"preset_model": args.preset_config, "preset_size": args.preset_size, "preset_frames": args.preset_frames}
        )
        record.update(bench_distilled_preset(args, device, dtype))
        write()

    print()
    print(f"{args.config}, rank {args.rank}, {args.size}x{args.frames}, batch {args.batch}")
    print(f"{'':24}{'s/step':>10}{'vs base':>10}")
    for label, key in (("base", "base_s_per_step"), ("fused", "fused_s_per_step"), ("runtime", "runtime_s_per_step")):
        print(f"{label:24}{record[key]:>10.3f}{record[key] / record['base_s_per_step']:>9.3f}x")  # type: ignore[operator]
    print(f"switch A->B: fused {record['fused_switch_s']:.3f} s, runtime {record['runtime_switch_s']:.3f} s")
    print(
        f"fused vs runtime: {record['fused_vs_runtime_rel_err']:.2e}; restored bit-exact: {record['restored_bitwise']}"
    )
    print(f"peak VRAM {record['peak_vram_gb']:.1f} GB")
    if "distill_e2e_s" in record:
        print(f"distilled preset ({args.preset_config} {args.preset_size}x{args.preset_frames}, 4 steps, guidance 1): "
              f"{record['distill_e2e_s']:.2f} s end to end {record['distill_stage_s']}")  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
