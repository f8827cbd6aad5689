"""Reading and writing diffusers-style safetensors weights, single-file or sharded.

A folder holds either `diffusion_pytorch_model.safetensors` or shards listed in
`diffusion_pytorch_model.safetensors.index.json` (its "weight_map": tensor name -> shard file).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = f"{WEIGHTS_NAME}.index.json"


def weight_files(folder: Path, weights_name: str = WEIGHTS_NAME) -> list[Path]:
    """The safetensors files that make up the checkpoint in `folder`, in index order."""
    index = folder / f"{weights_name}.index.json"
    if index.exists():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        return [folder / name for name in dict.fromkeys(weight_map.values())]
    single = folder / weights_name
    if single.exists():
        return [single]
    raise FileNotFoundError(f"no {weights_name} or its index in {folder}")


def load_state_dict(
    folder: Path, device: torch.device | str = "cpu", weights_name: str = WEIGHTS_NAME
) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint in `folder`, loaded straight onto `device`, dtypes as stored."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder, weights_name):
        state.update(load_file(path, device=str(device)))
    return state


def save_state_dict(state: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int | None = None) -> list[Path]:
    """Write `state` as one file, or as numbered shards plus an index when it exceeds `max_shard_bytes`."""
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in state.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if max_shard_bytes is not None and shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = tensor
        shard_bytes += size
    if len(shards) == 1:
        path = folder / WEIGHTS_NAME
        save_file(shards[0], path, metadata={"format": "pt"})
        return [path]
    stem = WEIGHTS_NAME.removesuffix(".safetensors")
    paths = [folder / f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for path, shard in zip(paths, shards, strict=True):
        save_file(shard, path, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, path.name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return paths
