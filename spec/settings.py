"""Process-level engine settings, read from the environment (prefix `VIDQ_`).

The root of vidq's one settings tree: the service's `jobs.settings.Settings` extends
`EngineSettings` with the API's and the worker's knobs, so each variable is read by one field with
one default, and a worker hands its settings straight to `Engine(model, settings)`. `Engine`
itself never reads the environment: without settings it takes `EngineSettings.defaults()`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

AttentionBackendName = Literal["auto", "sdpa", "cudnn", "flash", "flash_attn", "sage"]
CompileMode = Literal["auto", "on", "off"]
OffloadMode = Literal["auto", "none", "model", "layerwise"]
VaeTilingMode = Literal["auto", "on", "off"]
LoraMode = Literal["auto", "fused", "runtime"]
# The names `engine.attention.resolve_backend` accepts; see `engine.attention.dispatch` for each.
ATTENTION_BACKENDS: tuple[str, ...] = get_args(AttentionBackendName)
# The allowed values of the other choices, for the CLI and the memory planner.
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)
OFFLOAD_MODES: tuple[str, ...] = get_args(OffloadMode)
VAE_TILING_MODES: tuple[str, ...] = get_args(VaeTilingMode)


class EngineSettings(BaseSettings):
    """Where named models live and which attention kernel to prefer.

    `VIDQ_MODELS_DIR` holds one diffusers-format folder per registry name (`tiny-wan` is written
    there on first use; hub models are downloaded there). `VIDQ_ATTENTION_BACKEND` is resolved by
    `engine.attention.resolve_backend`. Read the folder as `resolved_models_dir`: unset, it is
    `VIDQ_DATA_DIR/models`, for the worker, `vidq generate` and the engine alike.
    """

    model_config = SettingsConfigDict(env_prefix="VIDQ_", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(default_factory=lambda: Path.home() / ".vidq")
    models_dir: Path | None = None
    device: str = ""  # e.g. "cuda:1", "cpu"; empty = cuda when available
    attention_backend: AttentionBackendName = "auto"
    # torch.compile of the DiT blocks: "auto" = on CUDA only (see engine.optimize).
    compile: CompileMode = "auto"
    # One GEMM for q|k|v (and k|v in cross-attention); numerically the same as three.
    fuse_projections: bool = True
    # Memory (see spec.memory): where the DiT, text encoder and VAE live. "auto" picks
    # the cheapest plan that fits the budget; "none" keeps everything on the GPU; "model" moves
    # each component to the GPU only for its stage; "layerwise" also streams the DiT's blocks.
    offload: OffloadMode = "auto"
    # GiB the engine may use on its GPU; None = the GPU's free memory when the engine loads.
    # The one budget: a worker plans within it and publishes it (`VIDQ_WORKER_VRAM_GB` is its
    # older name).
    vram_budget_gb: float | None = Field(
        default=None, gt=0, validation_alias=AliasChoices("VIDQ_VRAM_BUDGET_GB", "VIDQ_WORKER_VRAM_GB")
    )
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
    # Run requests that ask for FP8 on the CPU by emulating the FP8 GEMMs (for tests and CI);
    # without it FP8 needs a GPU with FP8 tensor cores and is refused elsewhere.
    fp8_emulation: bool = False

    @field_validator("data_dir", "models_dir")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @classmethod
    def defaults(cls) -> EngineSettings:
        """Every field at its default, ignoring the environment (what `Engine` uses without settings)."""
        return cls.model_construct()

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.data_dir / "models"
