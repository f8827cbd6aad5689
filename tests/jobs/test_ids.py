from jobs.ids import new_job_id, new_ulid


def test_job_ids_have_the_prefix_and_sort_by_creation_time() -> None:
    earlier = "video_" + new_ulid(now_ms=1_700_000_000_000)
    later = "video_" + new_ulid(now_ms=1_700_000_000_001)
    assert earlier < later
    job_id = new_job_id()
    assert job_id.startswith("video_") and len(job_id) == len("video_") + 26


def test_job_ids_are_unique() -> None:
    assert len({new_job_id() for _ in range(10_000)}) == 10_000
