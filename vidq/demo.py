"""``vidq demo``: the product end to end in one process, through its real HTTP API.

Starts the embedded runtime, creates an API key, submits a job for the built-in tiny model, follows
its event stream (every stage, and the denoising steps as a progress bar), downloads the mp4 and
prints its path on the last line.
"""

from __future__ import annotations

import sys
from pathlib import Path

from jobs.db import make_engine, make_session_factory, session_scope
from jobs.keys import create_key
from jobs.settings import Settings
from vidq.client import Client
from vidq.embedded import EmbeddedRuntime
from vidq.progress_bar import JobProgressBar

DEMO_PROMPT = "a red fox running through fresh snow at sunrise, cinematic"
DEMO_MODEL = "tiny-wan"
RANDOM_WEIGHTS_NOTE = (
    "note: tiny-wan has random weights, so the video is noise: the demo shows the whole service working, "
    "not what a real model draws (README: 'Install on a GPU host' for Wan2.1)"
)


def run_demo(settings: Settings, *, prompt: str = DEMO_PROMPT, out_dir: Path | None = None) -> Path:
    out_dir = out_dir or settings.data_dir / "demo"
    # Every step written to the row: in embedded mode the event stream follows the row.
    settings = settings.model_copy(update={"progress_write_interval_s": 0.0})
    print(f"starting vidq in one process (data in {settings.data_dir}) ...", file=sys.stderr)
    print(RANDOM_WEIGHTS_NOTE, file=sys.stderr)
    runtime = EmbeddedRuntime(settings).start()
    try:
        with session_scope(make_session_factory(make_engine(settings))) as session:
            key = create_key(session=session, name="demo").plaintext
        with Client(runtime.base_url, key) as client:
            job = client.create(prompt, model=DEMO_MODEL)
            print(
                f"submitted {job['id']}: {job['size']}, {job['num_frames']} frames, "
                f"{job['num_inference_steps']} steps, seed {job['seed']}",
                file=sys.stderr,
            )
            bar = JobProgressBar()
            bar.update(job)
            job = client.wait(job["id"], on_progress=bar.update)
            bar.close()
            if job["status"] != "completed":
                error = job.get("error") or {}
                raise RuntimeError(f"job {job['id']} ended {job['status']}: {error.get('message')}")
            out_dir.mkdir(parents=True, exist_ok=True)
            path = client.download(job["id"], out_dir / f"{job['id']}.mp4")
        timings = ", ".join(f"{k} {v:.2f}s" for k, v in (job.get("stage_timings") or {}).items())
        print(f"completed in {job['completed_at'] - job['created_at']}s ({timings})", file=sys.stderr)
        return Path(path).resolve()
    finally:
        runtime.stop()
