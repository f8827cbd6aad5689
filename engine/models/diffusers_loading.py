"""Loading a diffusers-format checkpoint of a family the diffusers backend serves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from engine.pipelines.diffusers_families import DiffusersFamily, family_for_checkpoint


def checkpoint_class(folder: Path) -> str | None:
    """`_class_name` of the folder's model_index.json (None when there is none)."""
    index = folder / "model_index.json"
    if not index.is_file():
        return None
    return json.loads(index.read_text()).get("_class_name")


def diffusers_family_of(folder: Path) -> DiffusersFamily | None:
    """The family the backend serves this checkpoint with, or None (a native model, e.g. Wan)."""
    name = checkpoint_class(folder)
    return family_for_checkpoint(name) if name is not None else None


def load_variants(folder: Path, family: DiffusersFamily, dtype: torch.dtype) -> dict[str, Any]:
    """The pipeline objects this checkpoint runs, by class name, sharing one set of components.

    Everything loads on the CPU in `dtype` (placement is the engine's job, after planning); the
    progress bars diffusers draws per call are turned off (the engine reports steps itself).
    """
    import diffusers

    from engine.libraries import libraries_follow_the_process

    libraries_follow_the_process()
    name = checkpoint_class(folder)
    assert name is not None
    base = getattr(diffusers, name).from_pretrained(folder, dtype=dtype)
    variants = {}
    for class_name in family.pipeline_classes(name):
        pipe = base if class_name == name else getattr(diffusers, class_name).from_pipe(base)
        pipe.set_progress_bar_config(disable=True)
        variants[class_name] = pipe
    return variants
