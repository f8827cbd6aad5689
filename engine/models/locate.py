"""Turning what a user names (registry name, folder, Hub id) into a local checkpoint folder.

Where a registered model is looked for, in order:

1. ``models_dir/<name>`` — a plain diffusers folder (copied by hand, or ``hf download --local-dir``);
2. the Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE``) — what ``hf download <hub id>`` fills, and
   what any other diffusers user on the host already has;
3. a download into that cache, when the Hub can be reached (``HF_HUB_OFFLINE=1`` forbids it).

A folder counts as installed when it is *complete* (``folder_is_complete``): no marker file of our
own, so a folder copied from another machine is used as it is.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from engine.errors import EngineError
from spec.registry import ModelSpec, UnknownModelError, find_spec, list_specs

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin")
# The other families' random checkpoints (`engine.models.tiny_diffusers.TINY_WRITERS`), written on first use.
TINY_DIFFUSERS_NAMES = ("tiny-ltx-video", "tiny-cogvideox", "tiny-cogvideox-i2v", "tiny-mochi", "tiny-hunyuanvideo")


@dataclass(frozen=True)
class LocatedModel:
    """A local diffusers-format folder, the spec when the model is a registered one, and a stable id
    (registry name, hub id or resolved path) used to key caches."""

    folder: Path
    spec: ModelSpec | None
    model_id: str


class ModelNotInstalledError(EngineError, FileNotFoundError):
    """A registered model is neither in the models folder nor in the Hugging Face cache, and could
    not be downloaded. The message says where it was looked for and the command that installs it."""

    code = "model_unavailable"
    param = "model"

    def __init__(self, spec: ModelSpec, models_dir: Path, reason: str = "") -> None:
        self.spec = spec
        self.install_command = install_command(spec)
        where = f"not in {models_dir / spec.name} nor in the Hugging Face cache"
        hint = f"run `{self.install_command}`" if self.install_command else "it has no Hub id"
        super().__init__(f"model {spec.name} is not installed ({where}{'; ' + reason if reason else ''}): {hint}")


def install_command(spec: ModelSpec) -> str | None:
    """The command that puts `spec`'s weights where `locate_model` finds them (the HF cache)."""
    return f"hf download {spec.hub_id}" if spec.hub_id else None


def _component_is_complete(folder: Path) -> bool:
    """A component with a ``config.json`` is a model and needs its weights: every shard its
    ``*.index.json`` lists, or at least one weight file. Tokenizers and schedulers need only be present."""
    if not folder.is_dir():
        return False
    if not (folder / "config.json").is_file():
        return any(folder.iterdir())
    indexes = list(folder.glob("*.index.json"))
    for index in indexes:
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            return False
        if not all((folder / shard).is_file() for shard in shards):
            return False
    return bool(indexes) or any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir())


def folder_is_complete(folder: Path) -> bool:
    """True when `folder` holds a whole diffusers checkpoint: ``model_index.json`` and every component
    it names, each complete. Hugging Face downloads move each file into place only once it is whole,
    so a missing file is what an interrupted download looks like."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return False
    components = [name for name, value in index.items() if not name.startswith("_") and _names_a_class(value)]
    return all(_component_is_complete(folder / name) for name in components)


def _names_a_class(value: object) -> bool:
    # model_index.json entries are ["library", "ClassName"]; [null, null] marks an absent component.
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)


def _cached_snapshot(repo_id: str) -> Path | None:
    """The Hugging Face cache's snapshot of `repo_id` (no network), if one is there."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # the API-only install (no [engine] extra) has no Hugging Face cache to read
        return None

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError) or an unreadable cache
        return None


def _download(repo_id: str) -> Path:
    """Download `repo_id` into the Hugging Face cache (resumes a partial download); needs the Hub."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id))


def installed_models(models_dir: Path, *, builtin: bool = True) -> list[str]:
    """The one meaning of "installed": every registered model whose complete checkpoint
    `installed_folder` finds, and (with `builtin`) the built-in models, written on first use.
    Never downloads."""
    return sorted(
        s.name
        for s in list_specs()
        if (builtin and s.builtin) or (not s.builtin and installed_folder(s, models_dir) is not None)
    )


def installed_folder(spec: ModelSpec, models_dir: Path) -> Path | None:
    """Where `spec`'s complete checkpoint is on this machine (models folder first, then the HF
    cache), or None. Never downloads."""
    folder = models_dir / spec.name
    if folder_is_complete(folder):
        return folder
    if spec.hub_id:
        snapshot = _cached_snapshot(spec.hub_id)
        if snapshot is not None and folder_is_complete(snapshot):
            return snapshot
    return None


def locate_model(model: str | Path, models_dir: Path) -> LocatedModel:
    """Find (and if needed create or download) the checkpoint for `model`.

    - An existing folder is used as is (no spec: the registry does not know arbitrary folders).
    - A registry name or its hub id: ``tiny-wan`` and the other ``tiny-*`` checkpoints are written to
      ``models_dir/<name>`` on first use; other models are looked up as the module docstring says,
      and downloaded into the Hugging Face cache when missing. Raises ``ModelNotInstalledError`` when
      that is impossible.
    - Any other "org/name" goes through the Hugging Face cache the same way.
    """
    if isinstance(model, Path) or Path(model).expanduser().is_dir():
        folder = Path(model).expanduser().resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder {folder} does not exist")
        return LocatedModel(folder=folder, spec=None, model_id=str(folder))

    spec = find_spec(model)
    if spec is not None:
        if spec.builtin:  # the tiny-wan* checkpoints (engine.models.tiny)
            from engine.models.tiny import write_tiny_wan

            # a no-op once written (it is renamed into place complete)
            folder = write_tiny_wan(models_dir / spec.name, spec.name)
            return LocatedModel(folder=folder, spec=spec, model_id=spec.name)
        if spec.name in TINY_DIFFUSERS_NAMES:
            from engine.models.tiny_diffusers import write_tiny_diffusers

            folder = write_tiny_diffusers(spec.name, models_dir / spec.name)
            return LocatedModel(folder=folder, spec=spec, model_id=spec.name)
        folder = installed_folder(spec, models_dir)
        if folder is None:
            if spec.hub_id is None:
                raise ModelNotInstalledError(spec, models_dir)
            folder = _download_or_explain(spec, models_dir)
        return LocatedModel(folder=folder, spec=spec, model_id=spec.name)

    if model.count("/") == 1 and not model.startswith((".", "/", "~")):
        snapshot = _cached_snapshot(model)
        folder = snapshot if snapshot is not None and folder_is_complete(snapshot) else _download(model)
        return LocatedModel(folder=folder, spec=None, model_id=model)
    raise UnknownModelError(model)


def _download_or_explain(spec: ModelSpec, models_dir: Path) -> Path:
    assert spec.hub_id is not None
    logger.info("downloading %s (%s) into the Hugging Face cache", spec.name, spec.hub_id)
    try:
        folder = _download(spec.hub_id)
    except Exception as exc:  # offline, hub down, gated repo: say what to do instead of a traceback
        reason = f"downloading {spec.hub_id} failed: {type(exc).__name__}"
        raise ModelNotInstalledError(spec, models_dir, reason) from exc
    if not folder_is_complete(folder):
        raise ModelNotInstalledError(spec, models_dir, f"the download of {spec.hub_id} is incomplete")
    return folder
