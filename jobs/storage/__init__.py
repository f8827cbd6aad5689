"""Object storage for results: S3 when configured, a local folder in embedded mode."""

from __future__ import annotations

from jobs.settings import Settings
from jobs.storage.base import Storage, checkpoint_key, result_keys
from jobs.storage.local import LocalStorage
from jobs.storage.s3 import S3Storage

__all__ = ["LocalStorage", "S3Storage", "Storage", "checkpoint_key", "make_storage", "result_keys"]


def make_storage(settings: Settings) -> Storage:
    if settings.s3_endpoint:
        return S3Storage(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value(),
            secret_key=settings.s3_secret_key.get_secret_value(),
            bucket=settings.s3_bucket,
            region=settings.s3_region,
            public_endpoint=settings.s3_public_endpoint,
            timeout_s=settings.s3_timeout_s,
            retry_s=settings.storage_retry_s,
        )
    return LocalStorage(settings.storage_dir)
