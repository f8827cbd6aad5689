"""`benchmarks/bench_submit.py` runs end to end on the test PostgreSQL (a tiny run) and writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.conftest import PG_ADMIN_URL

ROOT = Path(__file__).resolve().parents[2]


def test_a_tiny_run_writes_its_result_and_drops_its_database(tmp_path: Path) -> None:
    server = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    env = {**os.environ, "VIDQ_BENCH_POSTGRES": server}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_submit.py"),
            "--runs",
            "2",
            "--submits",
            "10",
            "--warmup",
            "2",
            "--out",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    [path] = tmp_path.glob("submit-*.json")
    result = json.loads(path.read_text())
    assert result["bench"] == "submit_path" and result["settings"]["submits"] == 10
    assert len(result["runs"]) == 2
    assert all(run["cpu_ms_per_submit"] > 0 and run["wall_ms_per_submit"] > 0 for run in result["runs"])
    with psycopg.connect(PG_ADMIN_URL) as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'vidq_bench_submit_%'").fetchone()
    assert left == (0,)  # its database is gone
