"""Process-level engine settings, read from the environment (prefix `VIDQ_`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

AttentionBackendName = Literal["auto", "sdpa", "cudnn", "flash", "flash_attn", "sage"]
CompileMode = Literal["auto", "on", "off"]
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

    @field_validator("models_dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()
