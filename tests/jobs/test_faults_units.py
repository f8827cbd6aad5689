"""The small pieces behind "transient faults are retried": database retries with a deadline, which
errors count as transient, and a readiness probe that answers in bounded time."""

from __future__ import annotations

import threading

import pytest
import urllib3
from minio.error import S3Error
from sqlalchemy import exc as sa_exc

from jobs.db import retry_db
from jobs.errors import DependencyUnavailable, InvalidParameter
from jobs.execution import retry_delay_s
from jobs.readiness import ReadinessProbe
from jobs.transient import transient_code


def _outage() -> sa_exc.OperationalError:
    return sa_exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_database_blip_shorter_than_the_deadline_is_ridden_out() -> None:
    clock, calls = FakeClock(), []

    def write() -> str:
        calls.append(clock.now)
        if len(calls) < 4:
            raise _outage()
        return "written"

    assert retry_db(write, deadline_s=5, what="progress", sleep=clock.sleep, clock=clock) == "written"
    assert len(calls) == 4 and clock.sleeps == [0.1, 0.2, 0.4]  # backing off


def test_a_longer_outage_ends_in_dependency_unavailable_naming_the_database() -> None:
    clock = FakeClock()

    def write() -> None:
        raise _outage()

    with pytest.raises(DependencyUnavailable) as raised:
        retry_db(write, deadline_s=3, what="progress of video_x", sleep=clock.sleep, clock=clock)
    assert raised.value.dependency == "database" and raised.value.code == "database_unavailable"
    assert "progress of video_x" in raised.value.message
    assert clock.now <= 3


def test_errors_that_are_not_outages_are_not_retried() -> None:
    clock, calls = FakeClock(), []

    def write() -> None:
        calls.append(1)
        raise sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key"))

    with pytest.raises(sa_exc.IntegrityError):
        retry_db(write, deadline_s=5, what="x", sleep=clock.sleep, clock=clock)
    assert calls == [1]


def test_transient_codes_name_the_dependency() -> None:
    no_bucket = S3Error(None, "NoSuchBucket", "gone", "vidq", "r", "h")
    access_denied = S3Error(None, "AccessDenied", "no", "vidq", "r", "h")
    assert transient_code(DependencyUnavailable("storage", "down")) == "storage_unavailable"
    assert transient_code(_outage()) == "database_unavailable"
    assert transient_code(urllib3.exceptions.MaxRetryError(None, "/", "refused")) == "storage_unavailable"
    assert transient_code(no_bucket) == "storage_unavailable"
    assert transient_code(ConnectionResetError()) == "connection_error"
    wrapped = RuntimeError("render failed")
    wrapped.__cause__ = _outage()
    assert transient_code(wrapped) == "database_unavailable"
    for permanent in (access_denied, ValueError("bad size"), InvalidParameter("x"), MemoryError()):
        assert transient_code(permanent) is None


def test_retry_back_off_doubles_up_to_its_maximum() -> None:
    delays = [retry_delay_s(attempt, backoff_s=5, backoff_max_s=30) for attempt in (1, 2, 3, 4, 5)]
    assert delays == [5, 10, 20, 30, 30]


def test_readiness_reports_a_hung_dependency_without_waiting_for_it_or_piling_up_checks() -> None:
    release, started = threading.Event(), []

    def hung() -> None:
        started.append(1)
        release.wait()

    def down() -> None:
        raise ConnectionRefusedError("refused")

    probe = ReadinessProbe({"database": lambda: None, "storage": hung, "broker": down}, deadline_s=0.05)
    try:
        first, second = probe.run(), probe.run()
        assert first["database"] is None and second["database"] is None
        assert "did not answer" in (first["storage"] or "") and "did not answer" in (second["storage"] or "")
        assert "unreachable" in (first["broker"] or "")
        assert started == [1]  # the second probe did not start another check of the hung store
    finally:
        release.set()
        probe.close()
