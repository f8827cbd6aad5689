"""Converted adapters kept in host memory, bounded by bytes, least recently used out first."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from engine.lora.adapter import Adapter, load_adapter


class AdapterCache:
    """`get(key, path)` returns the adapter, reading and converting `path` only on a miss.

    `key` names the adapter's content (the service uses the adapter id, which never changes
    content). An adapter larger than the whole budget is still returned, just not kept.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Adapter] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, key: str, path: str | Path) -> Adapter:
        with self._lock:
            adapter = self._entries.get(key)
            if adapter is not None:
                self._entries.move_to_end(key)
                return adapter
        adapter = load_adapter(key, path)  # outside the lock: reading a file can take a while
        with self._lock:
            self.loads += 1
            if adapter.nbytes <= self.max_bytes:
                self._entries[key] = adapter
                while sum(a.nbytes for a in self._entries.values()) > self.max_bytes:
                    self._entries.popitem(last=False)
        return adapter

    def keys(self) -> list[str]:
        """The adapters held, most recently used last (what a worker publishes as warm)."""
        with self._lock:
            return list(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(a.nbytes for a in self._entries.values())
