"""`vidq api --workers 2`: two API processes behind one port. Whichever answers a scrape, the
counters are the sum over both (prometheus_client's multiprocess mode), so they never go back."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobs.settings import Settings
from tests.service.processes import VIDQ, settings_env
from tests.service.test_json_logs import stop, wait_until_up
from vidq.embedded import free_port

pytestmark = pytest.mark.integration


def healthz_count(text: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "vidq_http_requests_total" and s.labels["route"] == "/healthz"
    )


def test_counters_are_summed_over_api_processes_and_only_go_up(service_settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    shared = tmp_path / "prometheus"
    log_path = tmp_path / "api.log"
    with log_path.open("w") as log:
        api = subprocess.Popen(
            [VIDQ, "api", "--port", str(port), "--workers", "2"],
            env=settings_env(service_settings, VIDQ_METRICS_PUBLIC="true", PROMETHEUS_MULTIPROC_DIR=str(shared)),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/readyz", api, log_path)
        base = f"http://127.0.0.1:{port}"
        seen = []
        for round_ in range(6):
            for _ in range(10):  # a new connection each time, so either process may take it
                assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
            seen.append(healthz_count(httpx.get(f"{base}/metrics", timeout=10).text))
            assert seen[-1] == 10 * (round_ + 1), (seen, log_path.read_text())
    finally:
        stop(api)
    assert seen == sorted(seen)
    pids = {path.stem.rsplit("_", 1)[-1] for path in shared.glob("counter_*.db")}
    assert pids, "no process wrote its counters to the shared folder"
