"""Process-level engine settings, read from the environment (prefix `VIDQ_`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

AttentionBackendName = Literal["auto", "sdpa", "cudnn", "flash", "flash_attn", "sage"]
CompileMode = Literal["auto", "on", "off"]
OffloadMode = Literal["auto", "none", "model", "layerwise"]
VaeTilingMode = Literal["auto", "on", "off"]
LoraMode = Literal["auto", "fused", "runtime"]
# The names `engine.attention.resolve_backend` accepts; see `engine.attention.dispatch` for each.
ATTENTION_BACKENDS: tuple[str, ...] = get_args(AttentionBackendName)


class EngineSettings(BaseSettings):
    """Where named models live and which attention kernel to prefer.

    `VIDQ_MODELS_DIR` holds one diffusers-format folder per registry name (`tiny-wan` is written
    there on first use; hub models are downloaded there). `VIDQ_ATTENTION_BACKEND` is resolved by
    `engine.attention.resolve_backend`.
    """

    model_config = SettingsConfigDict(env_prefix="VIDQ_", extra="ignore")

    models_dir: Path = Path("~/.vidq/models")
    attention_backend: AttentionBackendName = "auto"
    # torch.compile of the DiT blocks: "auto" = on CUDA only (see engine.optimize).
    compile: CompileMode = "auto"
    # One GEMM for q|k|v (and k|v in cross-attention); numerically the same as three.
    fuse_projections: bool = True
    # Memory (see engine.memory.planner): where the DiT, text encoder and VAE live. "auto" picks
    # the cheapest plan that fits the budget; "none" keeps everything on the GPU; "model" moves
    # each component to the GPU only for its stage; "layerwise" also streams the DiT's blocks.
    offload: OffloadMode = "auto"
    # GiB the engine may use on its GPU; None = the GPU's free memory when the engine loads.
    vram_budget_gb: float | None = None
    # Tile the VAE decode: "auto" = when the untiled decode would not fit the budget.
    vae_tiling: VaeTilingMode = "auto"
    # Run the text encoder on the CPU (never on the GPU); the embedding cache absorbs repeats.
    text_encoder_on_cpu: bool = False
    # Blocks kept on the GPU under layer-wise offload; None = as many as the budget allows.
    offload_resident_blocks: int | None = None
    # LoRA adapters (engine.lora): "fused" merges them into the weights (no cost per step),
    # "runtime" runs them as low-rank slots beside the weights; "auto" fuses, except when the DiT
    # is offloaded (merging would rewrite its host copy at every switch) and the slots fit.
    lora_mode: LoraMode = "auto"
    # Rank of the runtime slots (several adapters share it side by side); 0 = no slots.
    lora_runtime_rank: int = 64
    # Host memory for converted adapters kept between jobs.
    lora_cache_mb: int = 4096

    @field_validator("models_dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()
