"""Where does the bf16 parity error come from? Each variant's final latents against diffusers'
bf16 run and against a float32 run (TF32 off) of the same weights. Prints a table, writes JSON."""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import CONFIGS, TEXT_TOKENS, diffusers_transformer, engine_transformer, relative_error, sync

from engine.optimize import compile_blocks, optimize_transformer
from engine.stages.denoising import DenoisingStage
from engine.stages.state import PipelineState
from spec.request import GenerationRequest


def main() -> None:
    from diffusers import UniPCMultistepScheduler, WanPipeline

    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
    config_name = sys.argv[2] if len(sys.argv) > 2 else "wan2.1-t2v-1.3b"
    width, height, frames, steps = (832, 480, 81, 4) if config_name != "tiny-wan" else (64, 64, 9, 3)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    config = CONFIGS[config_name]
    bf16 = diffusers_transformer(config, torch.bfloat16, device)
    fp32 = copy.deepcopy(bf16).float()
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
    )
    g = torch.Generator(device).manual_seed(2)
    pe = torch.randn(1, TEXT_TOKENS, config.text_dim, device=device, generator=g)
    ne = torch.randn(1, TEXT_TOKENS, config.text_dim, device=device, generator=g)
    noise = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, device=device, generator=g)

    def diffusers_run(model, dtype):  # type: ignore[no-untyped-def]
        pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=model, vae=None, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe(prompt_embeds=pe.to(dtype), negative_prompt_embeds=ne.to(dtype), latents=noise.clone(),
                    height=height, width=width, num_frames=frames, num_inference_steps=steps,
                    guidance_scale=5.0, output_type="latent", return_dict=False)[0]  # fmt: skip

    def engine_run(model):  # type: ignore[no-untyped-def]
        request = GenerationRequest(prompt="-", width=width, height=height, num_frames=frames,
                                    num_inference_steps=steps, guidance_scale=5.0, seed=0, fps=16)  # fmt: skip
        stage = DenoisingStage(device, model, dict(scheduler.config))
        for _ in range(2):  # the first run compiles
            state = PipelineState(request=request, on_step=lambda info: None)
            state.prompt_embeds, state.negative_prompt_embeds, state.latents = (
                pe.to(torch.bfloat16),
                ne.to(torch.bfloat16),
                noise.clone(),
            )
            stage(state)
        return state.latents, state.stage_timings_s["denoising"] / steps

    rows: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        ref = diffusers_run(bf16, torch.bfloat16)
        truth = diffusers_run(fp32, torch.float32)
        del fp32
        rows["diffusers bf16"] = {"s_per_step": float("nan")}
        compiled = torch.compile(bf16)
        diffusers_run(compiled, torch.bfloat16)
        sync(device)
        t = time.perf_counter()
        rows["diffusers bf16 compiled"] = {"latents": diffusers_run(compiled, torch.bfloat16)}
        sync(device)
        rows["diffusers bf16 compiled"]["s_per_step"] = (time.perf_counter() - t) / steps
        torch._dynamo.reset()
        variants = {
            "vidq eager (fused qkv)": lambda m: optimize_transformer(m, fuse=True, compile=False, gelu_epilogue=False),
            "vidq compiled, float32 intermediates": lambda m: compile_blocks(
                optimize_transformer(m, fuse=True, compile=False), emulate_precision_casts=False
            ),
            "vidq compiled (engine default)": lambda m: optimize_transformer(m, fuse=True, compile=True),
        }
        for name, prepare in variants.items():
            model = prepare(engine_transformer(config, bf16.state_dict()))
            latents, s_per_step = engine_run(model)
            rows[name] = {"latents": latents, "s_per_step": s_per_step}
            del model
            torch._dynamo.reset()

    rows["diffusers bf16"]["latents"] = ref
    report = {}
    print(f"{'variant':40}{'vs diffusers bf16':>20}{'vs fp32':>12}{'s/step':>10}")
    for name, row in rows.items():
        entry = {
            "rel_err_vs_diffusers_bf16": relative_error(row["latents"], ref),
            "rel_err_vs_fp32": relative_error(row["latents"], truth),
            "s_per_step": row["s_per_step"],
        }
        report[name] = entry
        print(
            f"{name:40}{entry['rel_err_vs_diffusers_bf16']:>20.2e}{entry['rel_err_vs_fp32']:>12.2e}{entry['s_per_step']:>10.3f}"
        )
    out = out_dir / f"numerics-{config_name}.json"
    out.write_text(json.dumps({"device": str(device), "config": config_name, "steps": steps, "rows": report}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
