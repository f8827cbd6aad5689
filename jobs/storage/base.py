"""The object-storage interface the worker writes results through and the API reads them from."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Protocol


class Storage(Protocol):
    def ensure_ready(self) -> None:
        """Create the bucket/folder if missing; raise if the store cannot be reached."""

    def check(self) -> None:
        """Raise unless the store answers and the bucket/folder exists; never creates anything."""

    def put_file(self, key: str, path: Path, content_type: str) -> None: ...

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...

    def get_bytes(self, key: str) -> bytes | None:
        """The object's content, or None when there is no such key."""

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error (deletes are retried)."""

    def exists(self, key: str) -> bool: ...

    def presigned_url(self, key: str, expires: timedelta) -> str | None:
        """A time-limited GET URL, or None when the store cannot sign (then the API streams)."""

    def open_stream(self, key: str) -> Iterator[bytes]: ...


def result_keys(job_id: str) -> tuple[str, str]:
    """Object keys of a job's video and thumbnail."""
    return f"videos/{job_id}/video.mp4", f"videos/{job_id}/thumbnail.jpg"


def checkpoint_key(job_id: str) -> str:
    """Object key of a job's last denoising checkpoint (overwritten by each save)."""
    return f"checkpoints/{job_id}/denoising.pt"
