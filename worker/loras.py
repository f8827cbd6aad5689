"""A worker's local copies of LoRA files, fetched from object storage on first use.

The engine keeps converted adapters in memory (bounded by `VIDQ_LORA_CACHE_MB`) and reads a file
only on a miss; these copies let it (and, in a GPU group, every rank) read from the local disk. At
most `VIDQ_LORA_FILES_KEPT` files stay; the least recently used go first.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from jobs.loras import lora_storage_key
from jobs.storage import Storage
from spec.errors import CodedError


class LoraUnavailable(CodedError, LookupError):
    """A job names an adapter whose file is gone (deleted after the job was queued)."""

    code = "lora_unavailable"
    param = "loras"


class LoraFiles:
    def __init__(self, storage: Storage, folder: Path, keep: int) -> None:
        self.storage = storage
        self.folder = folder
        self.keep = keep
        self._lock = threading.Lock()

    def path(self, lora_id: str) -> Path:
        """The local file of adapter `lora_id`, downloaded now if this worker has none."""
        target = self.folder / f"{lora_id}.safetensors"
        with self._lock:
            if target.is_file():
                os.utime(target)  # most recently used
                return target
            self.folder.mkdir(parents=True, exist_ok=True)
            key = lora_storage_key(lora_id)
            if not self.storage.exists(key):
                raise LoraUnavailable(f"LoRA adapter {lora_id} was deleted")
            partial = target.with_suffix(".part")
            with partial.open("wb") as handle:
                for chunk in self.storage.open_stream(key):
                    handle.write(chunk)
            partial.replace(target)  # atomic: a reader never sees half a file
            self._evict()
            return target

    def _evict(self) -> None:
        files = sorted(self.folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
        for stale in files[: max(0, len(files) - self.keep)]:
            stale.unlink(missing_ok=True)

    def refs(self, entries: list[dict[str, Any]] | None) -> tuple[Any, ...]:
        """A job's recorded adapters as the engine's `LoraRef`s (key = the adapter id): an entry
        for both experts is one ref for every expert; a per-expert entry (``id_2``/``scale_2``,
        see `jobs.loras.resolve_job_loras`) one ref for each expert."""
        from spec.request import HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT, LoraRef

        refs = []
        for entry in entries or ():
            if "id_2" not in entry:
                refs.append(LoraRef(entry["id"], str(self.path(entry["id"])), float(entry["scale"])))
                continue
            for suffix, expert in (("", HIGH_NOISE_EXPERT), ("_2", LOW_NOISE_EXPERT)):
                lora_id = entry[f"id{suffix}"]
                refs.append(LoraRef(lora_id, str(self.path(lora_id)), float(entry[f"scale{suffix}"]), expert))
        return tuple(refs)
