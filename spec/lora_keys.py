"""Which tensor of a LoRA file changes which weight of the Wan DiT: every key format, no torch.

This is the one place that knows the LoRA key formats. It works on names and shapes only, so
the API can check an upload (`check_adapter`) from the safetensors header without torch, and
the engine (`engine.lora.adapter`) builds its tensors from the same `LoraLayout`.

Formats (all map onto our module names, which are diffusers' `WanTransformer3DModel` names):

- **diffusers / PEFT**: `[transformer.|base_model.model.]blocks.0.attn1.to_q.lora_A.weight`,
  `lora_B.weight`, optional `.alpha`, and PEFT's `lora_B.bias` (a bias delta, like `diff_b`).
- **original Wan / ComfyUI**: `diffusion_model.blocks.0.self_attn.q.lora_down.weight` /
  `lora_up.weight` / `alpha` (or `lora_A`/`lora_B`), `.diff` (a full weight delta) and
  `.diff_b` (a bias delta). The step-distillation adapters (LightX2V, CausVid) use this format:
  low-rank pairs on the block linears plus `diff_b` on biases, `diff` on norms and, for some,
  on `head.head` and `time_projection`.
- **Kohya / musubi-tuner**: `lora_unet_blocks_0_self_attn_q.lora_down.weight`, `.alpha`.

Conventions (those of diffusers and ComfyUI): the low-rank update of a weight is
`scale * (alpha / rank) * up @ down` (alpha absent: alpha = rank), and `diff` / `diff_b` are
added times `scale`. diffusers drops norm `diff`s (they are zeros in the published files); we
apply them, which gives the same result on those files and the right one on any other.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

# Longest safetensors header we read (the format allows 100 MB; real LoRA headers are < 1 MB).
MAX_HEADER_BYTES = 16 * 2**20

_SUFFIXES = {
    "lora_A.weight": "down",
    "lora_down.weight": "down",
    "lora_B.weight": "up",
    "lora_up.weight": "up",
    "alpha": "alpha",
    "diff": "diff",
    "diff_b": "diff_b",
    "lora_B.bias": "diff_b",  # PEFT's lora_bias: added to the output, so a bias delta
}

# Original Wan module names -> ours, applied to the dotted path after the prefix is removed.
_WAN_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^blocks\.(\d+)\.self_attn\.(q|k|v)$", r"blocks.\1.attn1.to_\2"),
        (r"^blocks\.(\d+)\.self_attn\.o$", r"blocks.\1.attn1.to_out.0"),
        (r"^blocks\.(\d+)\.cross_attn\.(q|k|v)$", r"blocks.\1.attn2.to_\2"),
        (r"^blocks\.(\d+)\.cross_attn\.o$", r"blocks.\1.attn2.to_out.0"),
        (r"^blocks\.(\d+)\.self_attn\.norm_(q|k)$", r"blocks.\1.attn1.norm_\2"),
        (r"^blocks\.(\d+)\.cross_attn\.norm_(q|k)$", r"blocks.\1.attn2.norm_\2"),
        (r"^blocks\.(\d+)\.ffn\.0$", r"blocks.\1.ffn.net.0.proj"),
        (r"^blocks\.(\d+)\.ffn\.2$", r"blocks.\1.ffn.net.2"),
        (r"^blocks\.(\d+)\.norm3$", r"blocks.\1.norm2"),  # Wan's norm3 is the cross-attention norm
        (r"^blocks\.(\d+)\.modulation$", r"blocks.\1.scale_shift_table"),
        (r"^head\.head$", "proj_out"),
        (r"^head\.modulation$", "scale_shift_table"),
        (r"^text_embedding\.0$", "condition_embedder.text_embedder.linear_1"),
        (r"^text_embedding\.2$", "condition_embedder.text_embedder.linear_2"),
        (r"^time_embedding\.0$", "condition_embedder.time_embedder.linear_1"),
        (r"^time_embedding\.2$", "condition_embedder.time_embedder.linear_2"),
        (r"^time_projection\.1$", "condition_embedder.time_proj"),
    )
)
# Kohya flattens the dots into underscores; these put back the ones that separate modules.
_KOHYA_DOTS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^blocks_(\d+)_(self_attn|cross_attn)_(norm_q|norm_k|q|k|v|o)$", r"blocks.\1.\2.\3"),
        (r"^blocks_(\d+)_ffn_(\d)$", r"blocks.\1.ffn.\2"),
        (r"^blocks_(\d+)_(norm3|modulation)$", r"blocks.\1.\2"),
        (r"^head_head$", "head.head"),
        (r"^(text_embedding|time_embedding|time_projection)_(\d)$", r"\1.\2"),
    )
)
# Parameters that are not `<module>.weight`: their `diff` replaces the parameter itself.
_PARAMETER_TARGETS = re.compile(r"(^|\.)scale_shift_table$")


class LoraFormatError(ValueError):
    """A file that is not a LoRA this engine can apply (unknown keys, wrong shapes, wrong model)."""


@dataclass(frozen=True)
class LowRankKeys:
    """The file keys of one low-rank update of `module`'s weight."""

    module: str
    down: str  # [rank, in]
    up: str  # [out, rank]
    alpha: str | None


@dataclass(frozen=True)
class LoraLayout:
    """What a LoRA file changes: low-rank updates by module, full deltas by parameter name."""

    format: str  # "diffusers", "wan" or "kohya"
    low_rank: dict[str, LowRankKeys] = field(default_factory=dict)
    deltas: dict[str, str] = field(default_factory=dict)  # parameter name -> file key

    @property
    def targets(self) -> list[str]:
        return sorted({*self.low_rank, *(name.rsplit(".", 1)[0] for name in self.deltas)})


def detect_format(keys: Iterable[str]) -> str:
    keys = list(keys)
    if any(key.startswith("diffusion_model.") for key in keys):
        return "wan"
    if any(key.startswith("lora_unet_") for key in keys):
        return "kohya"
    return "diffusers"


def _split(key: str) -> tuple[str, str]:
    """'blocks.0.attn1.to_q.lora_A.weight' -> ('blocks.0.attn1.to_q', 'down')."""
    for suffix, kind in _SUFFIXES.items():
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], kind
        # PEFT saved with an adapter name: 'lora_A.default.weight'
        head, _, tail = suffix.partition(".")
        if tail and re.search(rf"\.{re.escape(head)}\.[^.]+\.{re.escape(tail)}$", key):
            return key[: key.rindex("." + head + ".")], kind
    raise LoraFormatError(f"key {key!r} is not a LoRA tensor (expected lora_A/lora_B/lora_down/lora_up/alpha/diff)")


def _module_name(path: str, fmt: str) -> str:
    if fmt == "wan":
        path = path.removeprefix("diffusion_model.")
    elif fmt == "kohya":
        path = path.removeprefix("lora_unet_")
        for pattern, replacement in _KOHYA_DOTS:
            path = pattern.sub(replacement, path)
    else:
        for prefix in ("base_model.model.", "transformer."):
            path = path.removeprefix(prefix)
    for pattern, replacement in _WAN_RENAMES:  # also for files that mix both namings
        path = pattern.sub(replacement, path)
    return path


def parse_layout(keys: Iterable[str]) -> LoraLayout:
    """Group a LoRA file's keys by what they change; raises `LoraFormatError` for any key it
    cannot place (a key silently dropped would be an adapter silently half-applied)."""
    keys = sorted(keys)
    if not keys:
        raise LoraFormatError("the file holds no tensors")
    fmt = detect_format(keys)
    parts: dict[str, dict[str, str]] = {}
    deltas: dict[str, str] = {}
    for key in keys:
        path, kind = _split(key)
        module = _module_name(path, fmt)
        if kind == "diff":
            name = module if _PARAMETER_TARGETS.search(module) else f"{module}.weight"
            deltas[name] = key
        elif kind == "diff_b":
            deltas[f"{module}.bias"] = key
        else:
            slot = parts.setdefault(module, {})
            if kind in slot:
                raise LoraFormatError(f"two {kind} tensors for {module}: {slot[kind]!r} and {key!r}")
            slot[kind] = key
    low_rank = {}
    for module, slot in parts.items():
        if "down" not in slot or "up" not in slot:
            present = ", ".join(sorted(slot.values()))
            raise LoraFormatError(f"{module}: a low-rank update needs both factors (found only {present})")
        low_rank[module] = LowRankKeys(module, slot["down"], slot["up"], slot.get("alpha"))
    return LoraLayout(fmt, low_rank, deltas)


# -- the model's side: which weights exist, with which shapes ------------------------------


@dataclass(frozen=True)
class DiTShape:
    """The dimensions of a Wan DiT that decide its parameter shapes (config.json fields)."""

    dim: int
    ffn_dim: int
    num_layers: int
    text_dim: int = 4096
    freq_dim: int = 256
    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> DiTShape:
        """From a transformer config.json (or `WanTransformerConfig.to_dict()`)."""
        dim = int(config["num_attention_heads"]) * int(config["attention_head_dim"])  # type: ignore[call-overload]
        return cls(
            dim=dim,
            ffn_dim=int(config["ffn_dim"]),  # type: ignore[call-overload]
            num_layers=int(config["num_layers"]),  # type: ignore[call-overload]
            text_dim=int(config["text_dim"]),  # type: ignore[call-overload]
            freq_dim=int(config["freq_dim"]),  # type: ignore[call-overload]
            in_channels=int(config["in_channels"]),  # type: ignore[call-overload]
            out_channels=int(config["out_channels"]),  # type: ignore[call-overload]
            patch_size=tuple(config["patch_size"]),  # type: ignore[arg-type]
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """Every nn.Linear of the DiT: module name -> (out_features, in_features)."""
        d, patch = self.dim, self.patch_size[0] * self.patch_size[1] * self.patch_size[2]
        shapes = {
            "condition_embedder.time_embedder.linear_1": (d, self.freq_dim),
            "condition_embedder.time_embedder.linear_2": (d, d),
            "condition_embedder.time_proj": (6 * d, d),
            "condition_embedder.text_embedder.linear_1": (d, self.text_dim),
            "condition_embedder.text_embedder.linear_2": (d, d),
            "proj_out": (self.out_channels * patch, d),
        }
        for i in range(self.num_layers):
            for attn in ("attn1", "attn2"):
                for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                    shapes[f"blocks.{i}.{attn}.{proj}"] = (d, d)
            shapes[f"blocks.{i}.ffn.net.0.proj"] = (self.ffn_dim, d)
            shapes[f"blocks.{i}.ffn.net.2"] = (d, self.ffn_dim)
        return shapes

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter of the DiT (our names = diffusers' names) -> shape."""
        d = self.dim
        shapes: dict[str, tuple[int, ...]] = {}
        for module, (out_features, in_features) in self.linear_shapes().items():
            shapes[f"{module}.weight"] = (out_features, in_features)
            shapes[f"{module}.bias"] = (out_features,)
        shapes["patch_embedding.weight"] = (d, self.in_channels, *self.patch_size)
        shapes["patch_embedding.bias"] = (d,)
        shapes["scale_shift_table"] = (1, 2, d)
        for i in range(self.num_layers):
            for attn in ("attn1", "attn2"):
                shapes[f"blocks.{i}.{attn}.norm_q.weight"] = (d,)
                shapes[f"blocks.{i}.{attn}.norm_k.weight"] = (d,)
            shapes[f"blocks.{i}.norm2.weight"] = (d,)
            shapes[f"blocks.{i}.norm2.bias"] = (d,)
            shapes[f"blocks.{i}.scale_shift_table"] = (1, 6, d)
        return shapes


@dataclass(frozen=True)
class AdapterSummary:
    """What an upload check learns about a LoRA file."""

    format: str
    rank: int  # the largest rank of its low-rank updates (0: only full deltas)
    num_targets: int
    num_tensors: int


def _broadcastable(delta: tuple[int, ...], param: tuple[int, ...]) -> bool:
    """A delta fits when it has the parameter's elements (Wan's modulation is [1, 6, d], some
    files store it as [6, d])."""
    count = 1
    for size in delta:
        count *= size
    expected = 1
    for size in param:
        expected *= size
    return delta == param or (count == expected and delta[-1] == param[-1])


def check_adapter(shapes: Mapping[str, tuple[int, ...]], dit: DiTShape) -> tuple[LoraLayout, AdapterSummary]:
    """Check a LoRA file's keys and shapes against a DiT; raises `LoraFormatError` naming the
    first tensor that does not fit. `shapes` maps each key of the file to its shape."""
    layout = parse_layout(shapes)
    linears = dit.linear_shapes()
    parameters = dit.parameter_shapes()
    ranks = []
    for module, keys in layout.low_rank.items():
        if module not in linears:
            raise LoraFormatError(f"{keys.down!r}: the model has no linear layer {module!r}")
        out_features, in_features = linears[module]
        down, up = tuple(shapes[keys.down]), tuple(shapes[keys.up])
        if len(down) != 2 or len(up) != 2 or down[0] != up[1]:
            raise LoraFormatError(f"{module}: factors {list(down)} and {list(up)} are not a low-rank pair")
        if down[1] != in_features or up[0] != out_features:
            raise LoraFormatError(
                f"{module}: the update is {up[0]}x{down[1]} but the layer is {out_features}x{in_features} "
                "(a LoRA for another model?)"
            )
        if keys.alpha is not None and tuple(shapes[keys.alpha]) not in ((), (1,)):
            raise LoraFormatError(f"{keys.alpha!r}: alpha must be a scalar")
        ranks.append(down[0])
    for name, key in layout.deltas.items():
        if name not in parameters:
            raise LoraFormatError(f"{key!r}: the model has no parameter {name!r}")
        if not _broadcastable(tuple(shapes[key]), parameters[name]):
            raise LoraFormatError(f"{key!r}: shape {list(shapes[key])} does not fit {name} {list(parameters[name])}")
    summary = AdapterSummary(layout.format, max(ranks, default=0), len(layout.targets), len(shapes))
    return layout, summary


# -- the file's side: keys and shapes from the safetensors header ---------------------------


def read_header(source: bytes | BinaryIO | Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """(key -> shape, the file's `__metadata__`) from a safetensors header, reading no tensor data.

    Raises `LoraFormatError` for anything that is not a well-formed safetensors file.
    """
    if isinstance(source, Path):
        with source.open("rb") as handle:
            return read_header(handle)
    prefix = source[:8] if isinstance(source, bytes) else source.read(8)
    if len(prefix) != 8:
        raise LoraFormatError("not a safetensors file (shorter than its header)")
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER_BYTES:
        raise LoraFormatError(f"not a safetensors file (header of {length} bytes)")
    raw = source[8 : 8 + length] if isinstance(source, bytes) else source.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LoraFormatError("not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise LoraFormatError("not a safetensors file (header is not an object)")
    metadata = header.pop("__metadata__", None) or {}
    shapes = {}
    for key, entry in header.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list):
            raise LoraFormatError(f"not a safetensors file (entry {key!r})")
        shapes[key] = tuple(int(size) for size in entry["shape"])
    return shapes, {str(k): str(v) for k, v in metadata.items()}


# The DiT of each registry model that takes adapters (config.json values; a test holds tiny-wan's
# to its real config). A LoRA is checked against its model's shapes at upload.
_TINY_DIT = DiTShape(dim=32, ffn_dim=64, num_layers=2, text_dim=32, freq_dim=32)
_WAN_14B_DIT = DiTShape(dim=5120, ffn_dim=13824, num_layers=40)
# Two-expert models (Wan2.2 A14B): both experts have this shape, so one check covers an adapter
# for either (or both) of them.
DIT_SHAPES: dict[str, DiTShape] = {
    "tiny-wan": _TINY_DIT,
    "wan2.1-t2v-1.3b": DiTShape(dim=1536, ffn_dim=8960, num_layers=30),
    "wan2.1-t2v-14b": _WAN_14B_DIT,
    "wan2.2-t2v-a14b": _WAN_14B_DIT,
    "wan2.2-i2v-a14b": replace(_WAN_14B_DIT, in_channels=36),
    "tiny-wan2.2-t2v-a14b": _TINY_DIT,
    "tiny-wan2.2-i2v-a14b": replace(_TINY_DIT, in_channels=36),
}
