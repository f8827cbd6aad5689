"""S3 faults: the store down when renders finish, and a bucket that disappeared."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from sqlalchemy import select

from jobs.db import session_scope
from jobs.models import JobAttempt
from jobs.storage.s3 import S3Storage
from tests.faults.conftest import BUCKET, Stack, assert_completed_exactly_once, submit


def test_jobs_finishing_while_s3_is_down_are_retried_and_completed(
    stack: Stack, client: httpx.Client, start_worker
) -> None:
    start_worker()
    stack.s3.stop()
    try:
        ids = submit(client, 3)
        deadline = time.monotonic() + 120
        while True:  # until an upload has failed for good and its attempt was ended by the store
            with session_scope(stack.session_factory) as session:
                ended = session.scalars(
                    select(JobAttempt).where(JobAttempt.job_id.in_(ids), JobAttempt.error.contains("storage"))
                ).first()
            if ended is not None:
                break
            assert time.monotonic() < deadline, "no upload ever failed"
            time.sleep(0.2)
    finally:
        stack.s3.start()
    jobs = assert_completed_exactly_once(stack, ids)
    assert max(job.attempts for job in jobs.values()) >= 2


def test_an_upload_recreates_a_missing_bucket(stack: Stack, tmp_path: Path) -> None:
    storage = S3Storage(
        endpoint=stack.s3.endpoint, access_key="testing", secret_key="testing", bucket="vanished", retry_s=5
    )
    source = tmp_path / "video.mp4"
    source.write_bytes(b"not really an mp4")
    assert not stack.s3_client().bucket_exists("vanished")
    storage.put_file("videos/x/video.mp4", source, "video/mp4")
    assert storage.get_bytes("videos/x/video.mp4") == source.read_bytes()
    storage.check()  # read-only: raises only when the bucket is gone
    assert stack.s3_client().bucket_exists(BUCKET)
