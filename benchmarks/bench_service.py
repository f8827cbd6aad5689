"""The service under load: submits per second and latency with many concurrent clients, and the
per-job overhead outside the engine (issue 17).

    python benchmarks/bench_service.py                         # 64 clients, 60 s, `vidq api --workers 2`
    python benchmarks/bench_service.py --duration 10 --baseline-duration 5 --overhead-jobs 3   # quick

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust) and Redis on 127.0.0.1:6379; a new
database is created for the run and dropped after, and one Redis database (``--redis-db``, a spare
one) is flushed before and after. Storage is a local folder (submits never touch it).

Phases, all against real processes started here (``vidq api``, ``vidq worker``):
1. baseline: ``--concurrency`` clients submitting for ``--baseline-duration`` s to ONE API process;
2. load: the same clients for ``--duration`` s to ``vidq api --workers N``: ``submit_rps``,
   ``submit_p50_ms``, ``submit_p99_ms``, ``errors`` (any non-202 or connection error);
3. reads: the same clients reading their jobs (``GET /v1/videos/{id}``) for ``--get-duration`` s:
   ``get_p99_ms``;
4. overhead: a ``vidq worker`` serving tiny-wan renders ``--overhead-jobs`` jobs one at a time;
   per job, (completed_at - created_at) from the database minus the job's own stage timings:
   ``overhead_p50_ms``, ``overhead_p95_ms`` (queueing, dispatch, claiming, upload bookkeeping).

The baseline is reported as ``submit_rps_ratio_vs_one_process``. The load generator runs on the
same machine as the service; ``loadavg`` records how busy the machine was (other work included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs.keys import KEY_PREFIX  # noqa: E402

VIDQ = str(Path(sys.executable).with_name("vidq"))
BODY = {
    "prompt": "a lighthouse in a storm",
    "model": "tiny-wan",
    "size": "64x64",
    "num_frames": 5,
    "num_inference_steps": 2,
}


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def python_speed_ms(iterations: int = 5_000_000) -> float:
    """Milliseconds this machine takes for a fixed pure-Python loop, on one core, best of three.

    The service is CPU-bound on 2 cores, and the development VMs differ (and vary) in speed: the same
    commit measured 490-510 submits/s on one day's machine and about half that on another's. Each
    result records this figure before and after its load phase, so runs on different machines or
    at different moments can be compared by it (submits/s x ms is about constant for one commit)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(iterations):
            total += i
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Service:
    """A fresh database, a spare Redis database, and the processes started on them."""

    def __init__(self, redis_db: int, data_dir: Path) -> None:
        from sqlalchemy import create_engine, text

        self.db_name = f"vidq_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.db_name}"'))
        admin.dispose()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("VIDQ_")},
            "VIDQ_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.db_name}",
            "VIDQ_REDIS_URL": f"redis://127.0.0.1:6379/{redis_db}",
            "VIDQ_SECRET_KEY": "bench-" + uuid.uuid4().hex,
            "VIDQ_DATA_DIR": str(data_dir),
            "VIDQ_MODELS_DIR": str(data_dir / "models"),
            "VIDQ_DEVICE": "cpu",
            "VIDQ_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        self.redis_db = redis_db
        self.procs: list[subprocess.Popen[bytes]] = []
        self.flush_redis()
        subprocess.run([VIDQ, "migrate"], env=self.env, check=True, capture_output=True)

    def flush_redis(self) -> None:
        import redis

        redis.Redis(host="127.0.0.1", port=6379, db=self.redis_db).flushdb()

    def create_key(self) -> str:
        out = subprocess.run(
            [VIDQ, "keys", "create", "--name", "bench"], env=self.env, check=True, capture_output=True, text=True
        ).stdout
        return next(word for word in out.split() if word.startswith(KEY_PREFIX))

    def start(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [VIDQ, *args], env=self.env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)

    def close(self) -> None:
        from sqlalchemy import create_engine, text

        for proc in self.procs:
            self.stop(proc)
        self.flush_redis()
        admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
        admin.dispose()


def wait_http(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not start")


class RawHttpError(Exception):
    """The connection broke or the server answered with something that is not HTTP/1.1."""


class RawClient:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol for this benchmark:
    requests with a fixed header block, answers read by ``Content-Length``.

    The load generator shares the machine's cores with the service it measures, so it must cost as
    little as possible: an httpx request costs several times the CPU of this (its per-request
    objects, header models and connection pool), CPU the server then lacks. A connection the server
    closed (``Connection: close``, e.g. a 503) is reopened for the next request.
    """

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port = host, port
        self.auth = f"Authorization: Bearer {key}\r\n".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n".encode() + self.auth
        if body:
            head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        self.writer.write(head + b"\r\n" + body)
        try:
            status_line, _, rest = (await self.reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
            parts = status_line.split(b" ", 2)
            length, close = 0, False
            for line in rest.split(b"\r\n"):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            payload = await self.reader.readexactly(length) if length else b""
            status = int(parts[1])
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as exc:
            await self.close()
            raise RawHttpError(type(exc).__name__) from exc
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def _cpu_ticks_by_group() -> dict[str, int]:
    """CPU time (clock ticks, user + system) of every process on the machine, summed by what it is:
    PostgreSQL, Redis, each process group (``pg:<id>``) and the rest; Linux only (empty elsewhere)."""
    totals: dict[str, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        group = "postgres" if comm == "postgres" else "redis" if comm.startswith("redis-server") else f"pg:{fields[2]}"
        totals[group] = totals.get(group, 0) + ticks
    return totals


def _machine_ticks() -> int:
    """All CPU time the machine spent (every core, idle excluded), in clock ticks."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values) - values[3] - values[4]  # minus idle and iowait


class CpuMeter:
    """Where the CPU went during a phase: the API processes, PostgreSQL (every database: other work
    on the machine included), Redis, this load generator, and everything else, in CPU seconds."""

    def __init__(self, api_group: int) -> None:
        self.api_group = f"pg:{api_group}"
        self.started = _cpu_ticks_by_group() if Path("/proc/stat").exists() else {}
        self.machine = _machine_ticks() if self.started else 0
        self.client = os.times()

    def read(self) -> dict[str, float]:
        if not self.started:
            return {}
        hz = os.sysconf("SC_CLK_TCK")
        now = _cpu_ticks_by_group()
        spent = {group: now.get(group, 0) - self.started.get(group, 0) for group in now}
        client_times = os.times()
        client = client_times.user + client_times.system - self.client.user - self.client.system
        api = spent.get(self.api_group, 0) / hz
        postgres, redis_s = spent.get("postgres", 0) / hz, spent.get("redis", 0) / hz
        machine = (_machine_ticks() - self.machine) / hz
        return {
            "api_s": round(api, 2),
            "postgres_s": round(postgres, 2),
            "redis_s": round(redis_s, 2),
            "client_s": round(client, 2),
            "other_s": round(max(0.0, machine - api - postgres - redis_s - client), 2),
            "machine_s": round(machine, 2),
        }


async def load(
    base: str,
    key: str,
    *,
    concurrency: int,
    duration_s: float,
    read_ids: list[str] | None = None,
) -> dict[str, object]:
    """``concurrency`` clients, each on its own keep-alive connection sending one request after the
    other for ``duration_s``: submits, or reads of ``read_ids`` when given."""
    latencies: list[float] = []
    per_client: list[list[float]] = [[] for _ in range(concurrency)]
    errors = 0
    kinds: dict[str, int] = {}  # what the errors were: HTTP status or exception class
    created: list[str] = []
    split = urlsplit(base)
    body = json.dumps(BODY).encode()
    clients = [RawClient(split.hostname or "127.0.0.1", split.port or 80, key) for _ in range(concurrency)]
    deadline = time.perf_counter() + duration_s

    async def one_client(n: int) -> None:
        nonlocal errors
        client, i = clients[n], n
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                if read_ids:
                    status, _ = await client.request("GET", f"/v1/videos/{read_ids[i % len(read_ids)]}")
                    ok = status == 200
                else:
                    status, payload = await client.request("POST", "/v1/videos", body)
                    ok = status == 202
                    if ok:
                        created.append(json.loads(payload)["id"])
                kind = str(status)
            except RawHttpError as exc:
                ok, kind = False, str(exc)
            latency = (time.perf_counter() - started) * 1000
            latencies.append(latency)
            per_client[n].append(latency)
            errors += not ok
            if not ok:
                kinds[kind] = kinds.get(kind, 0) + 1
            i += concurrency

    began = time.perf_counter()
    await asyncio.gather(*(one_client(n) for n in range(concurrency)))
    elapsed = time.perf_counter() - began
    for client in clients:
        await client.close()
    client_p50s = sorted(percentile(mine, 50) for mine in per_client if mine)
    return {
        "latencies": latencies,
        "errors": errors,
        "kinds": kinds,
        "created": created,
        "elapsed_s": elapsed,
        # Each client's median: a wide spread means the API processes got unequal shares of the
        # keep-alive connections (a client stays on the process that accepted it).
        "client_p50_ms": {
            "min": round(client_p50s[0], 1),
            "median": round(percentile(client_p50s, 50), 1),
            "max": round(client_p50s[-1], 1),
        }
        if client_p50s
        else {},
    }


def dispatch_latency(service: Service, since: datetime, until: datetime, drain_s: float = 60.0) -> dict[str, object]:
    """How far the relay was behind when the load ended (events not yet fanned out, render messages
    not yet published), then, once it has caught up (at most ``drain_s``), the time from each
    submit's commit to its render message reaching the broker (``dispatched_at - created_at``) for
    the jobs submitted during the load: p50, p99 and max in ms. A relay slower than the submits
    would show here as seconds, growing with the length of the run."""
    from sqlalchemy import create_engine, text

    engine = create_engine(service.env["VIDQ_DATABASE_URL"])
    backlog = (
        "SELECT (SELECT count(*) FROM job_events WHERE relayed_at IS NULL),"
        " (SELECT count(*) FROM dispatch_outbox WHERE published_at IS NULL)"
    )
    try:
        with engine.connect() as conn:
            events, outbox = conn.execute(text(backlog)).one()
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(text(backlog)).one() == (0, 0):
                    break
            time.sleep(0.5)
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY delay), max(delay), count(*)"
                    " FROM (SELECT extract(epoch FROM dispatched_at - created_at) * 1000 AS delay FROM jobs"
                    " WHERE created_at BETWEEN :since AND :until AND dispatched_at IS NOT NULL) AS d"
                ),
                {"since": since, "until": until},
            ).one()
    finally:
        engine.dispose()
    (p50, p99), worst, count = row[0] or (None, None), row[1], row[2]
    return {
        "relay_backlog_at_end": {"events": int(events), "outbox": int(outbox)},
        "dispatch_p50_ms": round(float(p50), 1) if p50 is not None else None,
        "dispatch_p99_ms": round(float(p99), 1) if p99 is not None else None,
        "dispatch_max_ms": round(float(worst), 1) if worst is not None else None,
        "dispatched_jobs": int(count),
    }


def overhead(service: Service, base: str, key: str, jobs: int, log_dir: Path) -> list[float]:
    """Render ``jobs`` tiny-wan jobs one at a time on a worker; per job, the wall time from the
    submit's commit to the completion's commit minus the job's own stage times, in ms."""
    from sqlalchemy import create_engine, text

    from engine.models.tiny import write_tiny_wan

    write_tiny_wan(Path(service.env["VIDQ_MODELS_DIR"]) / "tiny-wan")
    engine = create_engine(service.env["VIDQ_DATABASE_URL"])
    # The load phases left thousands of queued jobs: set them aside (cancelled, their messages gone),
    # so each measured job is the only one in the queue.
    for _ in range(5):  # the API's sweeper may hold some of these rows a moment
        try:
            with engine.begin() as conn:
                conn.execute(text("UPDATE jobs SET status = 'cancelled' WHERE status = 'queued'"))
            break
        except Exception:  # a deadlock with the sweeper: try again
            time.sleep(0.5)
    service.flush_redis()
    worker = service.start("worker", "--log-level", "WARNING", log=log_dir / "worker.log")
    results: list[float] = []
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            for n in range(jobs + 1):  # the first one warms the worker up and is not counted
                job_id = client.post("/v1/videos", json=BODY).raise_for_status().json()["id"]
                deadline = time.monotonic() + 300
                while True:
                    with engine.connect() as conn:
                        row = conn.execute(
                            text("SELECT status, created_at, completed_at, stage_timings FROM jobs WHERE id = :id"),
                            {"id": job_id},
                        ).one()
                    if row.status in ("completed", "failed", "cancelled"):
                        break
                    if time.monotonic() > deadline or worker.poll() is not None:
                        raise RuntimeError(f"job {job_id} did not finish; see {log_dir / 'worker.log'}")
                    time.sleep(0.05)
                if row.status != "completed":
                    raise RuntimeError(f"job {job_id} {row.status}")
                timings = row.stage_timings if isinstance(row.stage_timings, dict) else json.loads(row.stage_timings)
                stage_s = sum(float(v) for v in timings.values() if isinstance(v, int | float))
                if n:
                    results.append(((row.completed_at - row.created_at).total_seconds() - stage_s) * 1000)
    finally:
        engine.dispose()
        service.stop(worker)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--baseline-duration", type=float, default=20.0)
    parser.add_argument("--get-duration", type=float, default=10.0)
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--api-threads", type=int, default=None, help="VIDQ_API_THREADS of each API process")
    parser.add_argument("--overhead-jobs", type=int, default=10)
    parser.add_argument("--redis-db", type=int, default=12, help="a spare Redis database; it is flushed")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still stops the processes it started
    work = Path(tempfile.mkdtemp(prefix="vidq-bench-"))
    service = Service(args.redis_db, work)
    if args.api_threads:
        service.env["VIDQ_API_THREADS"] = str(args.api_threads)
    try:
        key = service.create_key()

        port = free_port()
        one = service.start("api", "--port", str(port), "--log-level", "WARNING", log=work / "api-1.log")
        wait_http(f"http://127.0.0.1:{port}")
        base1 = asyncio.run(
            load(f"http://127.0.0.1:{port}", key, concurrency=args.concurrency, duration_s=args.baseline_duration)
        )
        service.stop(one)

        port = free_port()
        many = service.start(
            "api",
            "--port",
            str(port),
            "--workers",
            str(args.api_workers),
            "--log-level",
            "WARNING",
            log=work / "api-n.log",
        )
        base = f"http://127.0.0.1:{port}"
        wait_http(base)
        load_avg_before = os.getloadavg()
        speed_before = python_speed_ms()
        meter = CpuMeter(api_group=many.pid)  # the API processes: the session `vidq api` leads
        load_began = datetime.now(UTC)
        main_run = asyncio.run(load(base, key, concurrency=args.concurrency, duration_s=args.duration))
        load_ended = datetime.now(UTC)
        cpu = meter.read()
        load_avg_during = os.getloadavg()
        dispatch = dispatch_latency(service, load_began, load_ended)
        speed_after = python_speed_ms()
        reads = asyncio.run(
            load(
                base,
                key,
                concurrency=args.concurrency,
                duration_s=args.get_duration,
                read_ids=list(main_run["created"])[:1000] or ["video_missing"],
            )  # type: ignore[arg-type]
        )
        over = overhead(service, base, key, args.overhead_jobs, work) if args.overhead_jobs else []
        service.stop(many)
    finally:
        service.close()

    submit_lat: list[float] = main_run["latencies"]  # type: ignore[assignment]
    submits_ok = len(main_run["created"])  # type: ignore[arg-type]
    submit_rps = submits_ok / float(main_run["elapsed_s"])  # type: ignore[arg-type]
    baseline_rps = len(base1["created"]) / float(base1["elapsed_s"])  # type: ignore[arg-type]
    result = {
        "bench": "service",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "device": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "cpus": os.cpu_count(),
        "api_workers": args.api_workers,
        "api_threads": args.api_threads or 8,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "submit_rps": round(submit_rps, 1),
        "submit_p50_ms": round(percentile(submit_lat, 50), 1),
        "submit_p99_ms": round(percentile(submit_lat, 99), 1),
        "submit_client_p50_ms": main_run["client_p50_ms"],
        "get_p99_ms": round(percentile(reads["latencies"], 99), 1),  # type: ignore[arg-type]
        "errors": int(main_run["errors"]) + int(reads["errors"]),  # type: ignore[call-overload]
        "error_kinds": {"submit": main_run["kinds"], "get": reads["kinds"]},
        # From each submit's commit to its render message on the broker (the relay keeping up).
        **dispatch,
        "overhead_p50_ms": round(percentile(over, 50), 1) if over else None,
        "overhead_p95_ms": round(percentile(over, 95), 1) if over else None,
        "overhead_jobs": len(over),
        "baseline": {
            "api_workers": 1,
            "duration_s": args.baseline_duration,
            "submit_rps": round(baseline_rps, 1),
            "submit_p99_ms": round(percentile(base1["latencies"], 99), 1),  # type: ignore[arg-type]
            "errors": base1["errors"],
            "error_kinds": base1["kinds"],
        },
        "submit_rps_ratio_vs_one_process": round(submit_rps / baseline_rps, 2) if baseline_rps else None,
        "get_requests": len(reads["latencies"]),  # type: ignore[arg-type]
        # The machine's speed around the load phase (python_speed_ms: lower is faster).
        "python_loop_ms": {"before": speed_before, "after": speed_after},
        "loadavg_before": [round(x, 2) for x in load_avg_before],
        "loadavg_during": [round(x, 2) for x in load_avg_during],
        # CPU seconds spent during the load phase, and per successful submit in ms (PostgreSQL and
        # "other" include whatever else ran on the machine meanwhile).
        "cpu_load_phase_s": cpu,
        "cpu_per_submit_ms": {
            name.removesuffix("_s"): round(seconds * 1000 / submits_ok, 2) for name, seconds in cpu.items()
        }
        if submits_ok
        else {},
        "settings": {
            "body": BODY,
            "load_generator": "raw asyncio HTTP/1.1 keep-alive connections (RawClient), one per client, same machine",
        },
    }
    print(f"{'phase':<28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    print(
        f"{'submit, 1 API process':<28}{baseline_rps:>10.1f}{percentile(base1['latencies'], 50):>10.1f}"  # type: ignore[arg-type]
        f"{percentile(base1['latencies'], 99):>10.1f}{base1['errors']:>8}"
    )  # type: ignore[arg-type]
    print(
        f"{f'submit, {args.api_workers} API processes':<28}{submit_rps:>10.1f}{result['submit_p50_ms']:>10}"
        f"{result['submit_p99_ms']:>10}{main_run['errors']:>8}"
    )
    get_rps = len(reads["latencies"]) / float(reads["elapsed_s"])  # type: ignore[arg-type]
    print(
        f"{'get':<28}{get_rps:>10.1f}{percentile(reads['latencies'], 50):>10.1f}"  # type: ignore[arg-type]
        f"{result['get_p99_ms']:>10}{reads['errors']:>8}"
    )
    print(
        f"submit to broker (ms): p50 {result['dispatch_p50_ms']}  p99 {result['dispatch_p99_ms']}"
        f"  max {result['dispatch_max_ms']}  (relay behind at the end: {result['relay_backlog_at_end']})"
    )
    print(
        f"overhead per job (ms): p50 {result['overhead_p50_ms']}  p95 {result['overhead_p95_ms']}  ({len(over)} jobs)"
    )
    print(f"each client's median submit (ms): {result['submit_client_p50_ms']}")
    print(
        f"ratio vs one process: {result['submit_rps_ratio_vs_one_process']}  loadavg during: {result['loadavg_during']}"
    )
    print(f"CPU ms per submit: {result['cpu_per_submit_ms']}")
    print(f"machine speed (5M-iteration Python loop, ms; lower is faster): {result['python_loop_ms']}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"service-{datetime.now(UTC):%Y-%m-%d}-{result['commit']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(path)


if __name__ == "__main__":
    main()
