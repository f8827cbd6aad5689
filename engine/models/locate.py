"""Turning what a user names (registry name, folder, hub id) into a local checkpoint folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.registry import ModelSpec, UnknownModelError, find_spec

TINY_NAME = "tiny-wan"


@dataclass(frozen=True)
class LocatedModel:
    """A local diffusers-format folder, the spec when the model is a registered one, and a stable id
    (registry name, hub id or resolved path) used to key caches."""

    folder: Path
    spec: ModelSpec | None
    model_id: str


def _download(repo_id: str, local_dir: Path | None) -> Path:
    # Only reached with network access; resumes a partial download on the next call.
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, local_dir=local_dir))


def locate_model(model: str | Path, models_dir: Path) -> LocatedModel:
    """Find (and if needed create or download) the checkpoint for `model`.

    - An existing folder is used as is (no spec: the registry does not know arbitrary folders).
    - A registry name or its hub id uses `models_dir/<name>`: `tiny-wan` is written there on
      first use; other models are downloaded from the hub into it.
    - Any other "org/name" is downloaded into the Hugging Face cache.
    """
    if isinstance(model, Path) or Path(model).expanduser().is_dir():
        folder = Path(model).expanduser().resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder {folder} does not exist")
        return LocatedModel(folder=folder, spec=None, model_id=str(folder))

    spec = find_spec(model)
    if spec is not None:
        folder = models_dir / spec.name
        if not (folder / "model_index.json").exists():
            if spec.name == TINY_NAME:
                from engine.models.tiny import write_tiny_wan

                write_tiny_wan(folder)
            elif spec.hub_id is not None:
                _download(spec.hub_id, folder)
            else:
                raise FileNotFoundError(f"{spec.name} is not in {models_dir} and has no hub id")
        return LocatedModel(folder=folder, spec=spec, model_id=spec.name)

    if model.count("/") == 1 and not model.startswith((".", "/", "~")):
        return LocatedModel(folder=_download(model, None), spec=None, model_id=model)
    raise UnknownModelError(model)
