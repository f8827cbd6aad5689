"""Where one Wan DiT forward's time goes, vidq against diffusers, on the same random weights.

    python benchmarks/probe_forward.py --model wan2.1-i2v-14b-480p        # H200: about 3 minutes
    python benchmarks/probe_forward.py --model wan2.1-i2v-14b-480p --tiny # CPU smoke run

For the model's default size and frame count (random weights, bf16, random text/CLIP embeddings):
- the forward's time: diffusers eager at batch 1 (how its pipeline runs CFG: two forwards a
  step), vidq optimized and compiled at batch 2 (batched CFG) per attention backend;
- the attention kernel alone at the model's self-attention shape, per SDPA backend, in TFLOP/s;
- a kernel profile of one forward of each, grouped (attention, GEMM, compiled/elementwise, other);
- single-forward parity of each vidq variant against diffusers' output, and diffusers against
  itself with the other attention kernel, which bounds the parity any kernel choice can reach.

Writes `benchmarks/results/probe_forward-<model>-<device>-<date>.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_engine import commit, diffusers_transformer, relative_error, sync  # noqa: E402
from benchmarks.bench_models import BENCHES, CLIP_TOKENS, TEXT_TOKENS, ours_on  # noqa: E402
from benchmarks.timing import median_ms  # noqa: E402
from engine.optimize import optimize_transformer  # noqa: E402
from spec.registry import get_spec  # noqa: E402

KERNEL_GROUPS = (
    ("attention", ("cudnn", "flash", "fmha", "attention", "sdpa")),
    ("gemm", ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas", "matmul")),
    ("compiled", ("triton",)),
)


def group_of(kernel: str) -> str:
    name = kernel.lower()
    for group, needles in KERNEL_GROUPS:
        if any(needle in name for needle in needles):
            return group
    return "other"


def profile_forward(fn, device: torch.device, top: int = 12) -> dict:  # type: ignore[no-untyped-def]
    """CUDA kernel time of one call of `fn`, by group and the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync(device)
    by_group: dict[str, float] = defaultdict(float)
    kernels = []
    for event in prof.key_averages():
        device_us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0.0)
        if not device_us or event.key.startswith("ProfilerStep"):
            continue
        by_group[group_of(event.key)] += device_us / 1e3
        kernels.append((device_us / 1e3, event.count, event.key[:110]))
    kernels.sort(reverse=True)
    return {
        "by_group_ms": {k: round(v, 1) for k, v in sorted(by_group.items())},
        "total_ms": round(sum(by_group.values()), 1),
        "top_kernels": [{"ms": round(ms, 2), "calls": n, "kernel": k} for ms, n, k in kernels[:top]],
    }


def attention_tflops(batch: int, heads: int, tokens: int, head_dim: int, device: torch.device) -> dict:
    """The self-attention kernel alone at the model's shape, per SDPA backend."""
    q, k, v = (torch.randn(batch, heads, tokens, head_dim, device=device, dtype=torch.bfloat16) for _ in range(3))
    flops = 4 * batch * heads * tokens * tokens * head_dim
    result = {}
    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel([backend]):
                ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v), device, warmup=2, iters=5)
        except RuntimeError as error:  # a kernel that refuses the shape
            result[name] = {"error": str(error)[:200]}
            continue
        result[name] = {"ms": round(ms, 2), "tflops": round(flops / ms / 1e9, 1)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wan2.1-i2v-14b-480p", choices=sorted(BENCHES))
    parser.add_argument("--backends", default="cudnn,flash", help="vidq attention backends to time")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="toy config (CPU smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    spec, bench = get_spec(args.model), BENCHES[args.model]
    config = bench.config
    width, height, frames = spec.default_width, spec.default_height, spec.default_frames
    if args.tiny:
        config = replace(config, num_attention_heads=2, attention_head_dim=16, ffn_dim=64, num_layers=2, text_dim=32)
        if config.image_dim is not None:
            config = replace(config, image_dim=24, added_kv_proj_dim=config.inner_dim)
        width, height, frames = 64, 64, 9
    spatial = 16 if bench.expand_timesteps else 8
    grid = ((frames - 1) // 4 + 1, height // spatial, width // spatial)
    tokens = grid[0] * (grid[1] // 2) * (grid[2] // 2)
    record: dict[str, object] = {
        "bench": "probe_forward",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "date": datetime.now(UTC).date().isoformat(),
        "commit": commit(),
        "torch": torch.__version__,
        "model": args.model,
        "size": f"{width}x{height}",
        "num_frames": frames,
        "tokens": tokens,
    }
    print(f"{args.model}: {width}x{height}x{frames}, {tokens} tokens", flush=True)

    reference = diffusers_transformer(config, dtype, device)
    generator = torch.Generator(device).manual_seed(3)
    latents = torch.randn(1, config.in_channels, *grid, device=device, generator=generator).to(dtype)
    text = torch.randn(2, TEXT_TOKENS, config.text_dim, device=device, generator=generator).to(dtype)
    image = None
    if config.image_dim is not None:
        image = torch.randn(1, 17 if args.tiny else CLIP_TOKENS, config.image_dim, device=device, generator=generator)
        image = image.to(dtype)
    timestep = torch.tensor([900.0], device=device)

    def diffusers_call(index: int) -> torch.Tensor:
        kwargs = {"encoder_hidden_states_image": image} if image is not None else {}
        return reference(latents, timestep, text[index : index + 1], return_dict=False, **kwargs)[0]

    with torch.inference_mode():
        expected = torch.cat([diffusers_call(0), diffusers_call(1)])
        diffusers_ms = median_ms(lambda: diffusers_call(0), device, warmup=1, iters=args.iters)
        record["diffusers_forward_ms"] = round(diffusers_ms, 1)
        record["diffusers_step_ms"] = round(2 * diffusers_ms, 1)
        print(f"diffusers forward {diffusers_ms:.0f} ms (step with CFG {2 * diffusers_ms:.0f} ms)", flush=True)
        if device.type == "cuda":
            record["diffusers_profile"] = profile_forward(lambda: diffusers_call(0), device)
            # diffusers against itself with cuDNN attention instead of its default kernel
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION], set_priority=True):
                own = torch.cat([diffusers_call(0), diffusers_call(1)])
            record["diffusers_cudnn_vs_default_rel_err"] = relative_error(own, expected)
            record["attention_kernel"] = attention_tflops(
                2, config.num_attention_heads, tokens, config.attention_head_dim, device
            )
            print(f"attention kernel: {record['attention_kernel']}", flush=True)

    ours = ours_on(reference, config)
    optimize_transformer(ours, fuse=True, compile=device.type == "cuda")
    variants: dict[str, object] = {}
    batch_latents = latents.expand(2, -1, -1, -1, -1)
    batch_image = image.expand(2, -1, -1) if image is not None else None
    backends = args.backends.split(",") if device.type == "cuda" else ["sdpa"]
    with torch.inference_mode():
        for backend in backends:
            ours.set_attention_backend(backend)

            def ours_call() -> torch.Tensor:
                return ours(batch_latents, timestep.expand(2), text, batch_image)

            started = time.perf_counter()
            output = ours_call()  # compiles for this backend
            sync(device)
            compile_s = time.perf_counter() - started
            ms = median_ms(ours_call, device, warmup=1, iters=args.iters)
            variant = {
                "forward_b2_ms": round(ms, 1),
                "speedup_vs_diffusers_step": round(2 * diffusers_ms / ms, 3),
                "first_call_s": round(compile_s, 1),
                "parity_rel_err": relative_error(output, expected),
            }
            if device.type == "cuda":
                variant["profile"] = profile_forward(ours_call, device)
            variants[backend] = variant
            print(
                f"vidq {backend}: batch-2 forward {ms:.0f} ms ({variant['speedup_vs_diffusers_step']:.3f}x "
                f"diffusers' step), parity {variant['parity_rel_err']:.2e}",
                flush=True,
            )
    record["vidq"] = variants
    for name, part in [("diffusers", record.get("diffusers_profile"))] + [
        (f"vidq {b}", v.get("profile")) for b, v in variants.items()
    ]:
        if part:
            print(f"{name:14} kernels {part['total_ms']:>8.1f} ms  {part['by_group_ms']}")
            for kernel in part["top_kernels"][:6]:
                print(f"    {kernel['ms']:>9.1f} ms  x{kernel['calls']:<5} {kernel['kernel']}")
    args.out.mkdir(parents=True, exist_ok=True)
    device_tag = str(record["device"]).split()[-1].lower()
    path = args.out / f"probe_forward-{args.model}-{device_tag}-{record['date']}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
