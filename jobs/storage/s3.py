"""Results in S3-compatible object storage (MinIO in deployment, moto in the tests) via the minio SDK."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from minio import Minio
from minio.error import S3Error


def _client(endpoint: str, access_key: str, secret_key: str, region: str) -> Minio:
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    return Minio(
        parts.netloc, access_key=access_key, secret_key=secret_key, secure=parts.scheme == "https", region=region
    )


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
    ) -> None:
        self.bucket = bucket
        self.client = _client(endpoint, access_key, secret_key, region)
        # Presigned URLs embed the host in the signature, so sign with the host clients will use.
        self.signing_client = (
            _client(public_endpoint, access_key, secret_key, region) if public_endpoint else self.client
        )

    def ensure_ready(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as exc:  # another process created it between the two calls
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        self.client.fput_object(self.bucket, key, str(path), content_type=content_type)

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
