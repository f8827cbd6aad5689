"""Results in S3-compatible object storage (MinIO in deployment, moto in the tests) via the minio SDK.

Every request has bounded timeouts (the SDK's default is five minutes, which made readiness checks
and uploads hang with the store), and writes are retried with back-off for ``retry_s`` seconds,
re-creating the bucket if it went missing (a store restarted without its data), before giving up
with :class:`~jobs.errors.DependencyUnavailable`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.error import MinioException, S3Error, ServerError
from urllib3.util import Retry, Timeout

from jobs.errors import DependencyUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
MISSING_BUCKET = "NoSuchBucket"
# S3 error codes that a retry can cure (the store is restarting or overloaded).
TRANSIENT_CODES = frozenset({MISSING_BUCKET, "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"})


def _client(endpoint: str, access_key: str, secret_key: str, region: str, timeout_s: float) -> Minio:
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    http = urllib3.PoolManager(
        timeout=Timeout(connect=timeout_s, read=timeout_s),
        maxsize=10,
        ca_certs=certifi.where(),
        # One quick retry inside the SDK; the deadline-bounded loop below does the rest.
        retries=Retry(total=1, backoff_factor=0.1, status_forcelist=[500, 502, 503, 504]),
    )
    return Minio(
        parts.netloc,
        access_key=access_key,
        secret_key=secret_key,
        secure=parts.scheme == "https",
        region=region,
        http_client=http,
    )


def _md5(path: Path) -> str:
    """The ETag S3 gives a single-part upload of ``path``."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def is_transient(exc: BaseException) -> bool:
    """Connection refused or reset, a timeout, a 5xx, or a missing bucket."""
    if isinstance(exc, S3Error):
        return exc.code in TRANSIENT_CODES
    return isinstance(exc, ServerError | urllib3.exceptions.HTTPError | OSError)


class S3Storage:
    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        region: str = "us-east-1",
        public_endpoint: str = "",
        timeout_s: float = 10.0,
        retry_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bucket = bucket
        self.retry_s = retry_s
        self._sleep, self._clock = sleep, clock
        self.client = _client(endpoint, access_key, secret_key, region, timeout_s)
        # Presigned URLs embed the host in the signature, so sign with the host clients will use.
        self.signing_client = (
            _client(public_endpoint, access_key, secret_key, region, timeout_s) if public_endpoint else self.client
        )

    def ensure_ready(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            self._make_bucket()

    def check(self) -> None:
        """Raise unless the bucket answers; creates nothing (readiness probes have no side effects)."""
        if not self.client.bucket_exists(self.bucket):
            raise DependencyUnavailable("storage", f"bucket {self.bucket!r} does not exist")

    def _make_bucket(self) -> None:
        try:
            self.client.make_bucket(self.bucket)
        except S3Error as exc:  # another process created it between the two calls
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """Run ``call`` until it succeeds, a permanent error, or ``retry_s`` seconds have passed."""
        deadline = self._clock() + self.retry_s
        delay = 0.2
        while True:
            try:
                return call()
            except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
                if not is_transient(exc):
                    raise
                if self._clock() + delay > deadline:
                    raise DependencyUnavailable("storage", f"{what} kept failing for {self.retry_s:g}s: {exc}") from exc
                log.warning("storage: %s failed (%s); retrying in %.1fs", what, exc, delay)
                self._sleep(delay)
                delay = min(delay * 2, 5.0)
                if isinstance(exc, S3Error) and exc.code == MISSING_BUCKET:
                    try:
                        self._make_bucket()
                    except Exception as make_exc:  # the store is still down; the next round retries
                        log.warning("storage: could not re-create bucket %s: %s", self.bucket, make_exc)

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        """Upload ``path`` unless ``key`` already holds the same bytes: a render that re-uploads after
        its worker died mid-upload (result keys are per job) stores its video once."""
        digest = _md5(path)

        def upload() -> None:
            if self._etag(key) == digest:
                return
            self.client.fput_object(self.bucket, key, str(path), content_type=content_type)

        self._retrying(f"upload of {key}", upload)

    def _etag(self, key: str) -> str | None:
        try:
            return (self.client.stat_object(self.bucket, key).etag or "").strip('"') or None
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return None
            raise

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._retrying(
            f"upload of {key}",
            lambda: self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type),
        )

    def get_bytes(self, key: str) -> bytes | None:
        def read() -> bytes | None:
            try:
                response = self.client.get_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                    return None
                raise
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._retrying(f"download of {key}", read)

    def delete(self, key: str) -> None:
        self.client.remove_object(self.bucket, key)

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            raise
        return True

    def presigned_url(self, key: str, expires: timedelta) -> str | None:
        return self.signing_client.presigned_get_object(self.bucket, key, expires=expires)

    def open_stream(self, key: str) -> Iterator[bytes]:
        response = self.client.get_object(self.bucket, key)
        try:
            yield from response.stream(1 << 20)
        finally:
            response.close()
            response.release_conn()
