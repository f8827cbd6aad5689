"""``vidq demo``: the product end to end in one process, through its real HTTP API.

Starts the embedded runtime, creates an API key, submits a job for the built-in tiny model,
draws a live progress bar from polling, downloads the mp4 and prints its path on the last line.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx

from jobs.db import make_engine, make_session_factory, session_scope
from jobs.keys import create_key
from jobs.settings import Settings
from vidq.embedded import EmbeddedRuntime
from vidq.progress_bar import JobProgressBar

DEMO_PROMPT = "a red fox running through fresh snow at sunrise, cinematic"


def run_demo(settings: Settings, *, prompt: str = DEMO_PROMPT, out_dir: Path | None = None) -> Path:
    out_dir = out_dir or settings.data_dir / "demo"
    print(f"starting vidq in one process (data in {settings.data_dir}) ...", file=sys.stderr)
    runtime = EmbeddedRuntime(settings).start()
    try:
        with session_scope(make_session_factory(make_engine(settings))) as session:
            key = create_key(session=session, name="demo").plaintext
        client = httpx.Client(base_url=runtime.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        response = client.post("/v1/videos", json={"prompt": prompt, "model": "tiny-wan"})
        response.raise_for_status()
        job = response.json()
        print(
            f"submitted {job['id']}: {job['size']}, {job['num_frames']} frames, "
            f"{job['num_inference_steps']} steps, seed {job['seed']}",
            file=sys.stderr,
        )

        bar = JobProgressBar()
        while job["status"] in ("queued", "in_progress"):
            bar.update(job)
            time.sleep(0.1)
            job = client.get(f"/v1/videos/{job['id']}").json()
        bar.update(job)
        bar.close()
        if job["status"] != "completed":
            error = job.get("error") or {}
            raise RuntimeError(f"job {job['id']} ended {job['status']}: {error.get('message')}")

        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{job['id']}.mp4"
        with client.stream("GET", f"/v1/videos/{job['id']}/content", follow_redirects=True) as stream:
            stream.raise_for_status()
            with path.open("wb") as fh:
                for chunk in stream.iter_bytes():
                    fh.write(chunk)
        timings = ", ".join(f"{k} {v:.2f}s" for k, v in (job.get("stage_timings") or {}).items())
        print(f"completed in {job['completed_at'] - job['created_at']}s ({timings})", file=sys.stderr)
        return path.resolve()
    finally:
        runtime.stop()
