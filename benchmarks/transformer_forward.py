"""Time one Wan DiT forward (random weights) per attention backend, optionally against diffusers.

    python benchmarks/transformer_forward.py --config wan2.1-t2v-1.3b --size 832x480 --frames 81 \\
        --batch 2 --backends sdpa,cudnn,flash --compare-diffusers --out result.json

Every backend's output is compared with the first one's (relative error), so a faster kernel
that changes the result shows up next to its time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import CONFIGS
from timing import median_ms

from engine.models.wan_transformer import WanTransformer3DModel
from spec.registry import parse_size

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=CONFIGS, default="tiny-wan")
    parser.add_argument("--size", default="64x64")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--batch", type=int, default=2, help="2 = cond and uncond in one forward")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--backends", default="sdpa")
    parser.add_argument("--compare-diffusers", action="store_true")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    config = CONFIGS[args.config]
    width, height = parse_size(args.size)
    latent_frames = (args.frames - 1) // 4 + 1

    torch.manual_seed(0)
    with torch.device(device):
        model = WanTransformer3DModel(config).eval().requires_grad_(False)
    model.to(device).cast(dtype)
    latents = torch.randn(args.batch, config.in_channels, latent_frames, height // 8, width // 8, device=device)
    latents = latents.to(dtype)  # [B, 16, F', H/8, W/8]
    timestep = torch.full((args.batch,), 500.0, device=device)
    text = torch.randn(args.batch, 512, config.text_dim, device=device, dtype=dtype)  # [B, 512, text_dim]
    tokens = latent_frames * (height // 16) * (width // 16)

    report: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "config": args.config,
        "shape": {"size": args.size, "frames": args.frames, "batch": args.batch, "tokens": tokens},
        "dtype": str(dtype),
        "forward_ms": {},
        "relative_error_vs_first": {},
    }
    reference = None
    with torch.inference_mode():
        for backend in args.backends.split(","):
            resolved = model.set_attention_backend(backend)
            out = model(latents, timestep, text)
            reference = out if reference is None else reference
            report["relative_error_vs_first"][resolved] = relative_error(out, reference)
            report["forward_ms"][resolved] = median_ms(
                lambda: model(latents, timestep, text), device, args.warmup, args.iters
            )
            print(resolved, report["forward_ms"][resolved], "ms", flush=True)

        if args.compare_diffusers:
            from diffusers import WanTransformer3DModel as DiffusersWan

            kwargs = {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
            with torch.device(device):
                theirs = DiffusersWan(**kwargs).eval().requires_grad_(False)
            theirs.load_state_dict(model.state_dict())
            for name, param in theirs.named_parameters():
                param.data = param.data.to(model.param_dtype(name, dtype))
            out = theirs(latents, timestep, text, return_dict=False)[0]
            report["relative_error_vs_first"]["diffusers"] = relative_error(out, reference)
            report["forward_ms"]["diffusers"] = median_ms(
                lambda: theirs(latents, timestep, text, return_dict=False), device, args.warmup, args.iters
            )
            print("diffusers", report["forward_ms"]["diffusers"], "ms", flush=True)

    if device.type == "cuda":
        report["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    text_out = json.dumps(report, indent=2)
    print(text_out)
    if args.out:
        args.out.write_text(text_out)


if __name__ == "__main__":
    main()
