"""Turning what a user names (registry name, folder, hub id) into a local checkpoint folder."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from engine.registry import ModelSpec, UnknownModelError, find_spec

logger = logging.getLogger(__name__)

TINY_NAME = "tiny-wan"


@dataclass(frozen=True)
class LocatedModel:
    """A local diffusers-format folder, the spec when the model is a registered one, and a stable id
    (registry name, hub id or resolved path) used to key caches."""

    folder: Path
    spec: ModelSpec | None
    model_id: str


# Written after a hub download into models_dir finishes: model_index.json alone can arrive before
# the weights do, so it does not prove a download complete.
DOWNLOAD_COMPLETE = ".vidq-download-complete"


def _download(repo_id: str, local_dir: Path | None) -> Path:
    # Only reached with network access; resumes a partial download on the next call.
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, local_dir=local_dir))


def _download_into(repo_id: str, folder: Path) -> None:
    """Download (or finish downloading) `repo_id` into `folder`, then mark it complete.

    A folder someone filled by hand (model_index.json, no marker) is used as is when the hub
    cannot be reached, so offline machines work with copied checkpoints.
    """
    try:
        _download(repo_id, folder)
    except Exception as exc:  # any network/hub failure: fall back to what is on disk, if anything
        if (folder / "model_index.json").exists():
            logger.warning("could not reach the hub for %s (%s); using %s as it is", repo_id, exc, folder)
            return
        raise
    (folder / DOWNLOAD_COMPLETE).touch()


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
        if spec.name == TINY_NAME:
            from engine.models.tiny import write_tiny_wan

            write_tiny_wan(folder)  # a no-op once written (it is renamed into place complete)
        elif not (folder / DOWNLOAD_COMPLETE).exists():
            if spec.hub_id is None:
                raise FileNotFoundError(f"{spec.name} is not in {models_dir} and has no hub id")
            _download_into(spec.hub_id, folder)
        return LocatedModel(folder=folder, spec=spec, model_id=spec.name)

    if model.count("/") == 1 and not model.startswith((".", "/", "~")):
        return LocatedModel(folder=_download(model, None), spec=None, model_id=model)
    raise UnknownModelError(model)
