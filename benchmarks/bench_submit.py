"""The submit path alone: ``jobs.crud.submit_job`` + commit in one thread, against local PostgreSQL.

No HTTP, no other thread: the CPU and wall time of one submit's statements and their Python side,
which is what the statement count changes (`bench_service.py` measures the whole service, where
this is a part lost in the noise of a 2-core VM). Each run is a fresh database (so the backlog is
the run's own), a warm-up, then ``--runs`` timed loops of ``--submits``.

Compare two commits as `bench_service.py` does: `PYTHONPATH=<worktree of the old commit> python
benchmarks/bench_submit.py --out DIR`, then the same without PYTHONPATH, alternating.

    python benchmarks/bench_submit.py                # 3 runs of 1,500 submits
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
# Appended, not prepended: a PYTHONPATH naming another checkout (the A/B above) must win.
sys.path.append(str(ROOT))
sys.path.append(str(ROOT / "benchmarks"))

from jobs import migrate  # noqa: E402
from jobs.crud import submit_job  # noqa: E402
from jobs.db import make_engine, make_session_factory, session_scope  # noqa: E402
from jobs.keys import create_key  # noqa: E402
from jobs.settings import Settings  # noqa: E402
from jobs.validation import JobRequest  # noqa: E402

SERVER = os.environ.get("VIDQ_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")
REQUEST = JobRequest(prompt="a fox", model="tiny-wan", size="64x64", num_frames=5, num_inference_steps=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--submits", type=int, default=1500)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    from bench_service import commit  # after the jobs imports: it puts this checkout first on sys.path

    name = f"vidq_bench_submit_{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    settings = Settings(database_url=f"{SERVER}/{name}")
    engine = make_engine(settings)
    runs: list[dict[str, float]] = []
    try:
        migrate.upgrade(settings)
        factory = make_session_factory(engine)
        with session_scope(factory) as session:
            owner = create_key(session=session, name="bench").record

        def one() -> None:
            with factory() as session:
                submit_job(session=session, owner=owner, request=REQUEST)
                session.commit()

        for _ in range(args.warmup):
            one()
        for _ in range(args.runs):
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(args.submits):
                one()
            runs.append(
                {
                    "cpu_ms_per_submit": round(1e3 * (time.process_time() - cpu) / args.submits, 3),
                    "wall_ms_per_submit": round(1e3 * (time.perf_counter() - wall) / args.submits, 3),
                }
            )
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    print(f"code: {Path(migrate.__file__).resolve().parents[1]}")
    print("| run | CPU ms per submit | wall ms per submit |\n|---|---|---|")
    for n, run in enumerate(runs, 1):
        print(f"| {n} | {run['cpu_ms_per_submit']} | {run['wall_ms_per_submit']} |")
    result = {
        "bench": "submit_path",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "device": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "code": str(Path(migrate.__file__).resolve().parents[1]),  # the checkout that ran (PYTHONPATH)
        "settings": {"submits": args.submits, "warmup": args.warmup, "request": asdict(REQUEST)},
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"submit-{result['date'][:10]}-{result['commit']}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
