"""``vidq api --workers N``: what each of the N API processes runs, and the shared metrics folder.

uvicorn starts each process fresh (spawn), so each one sets up its logging the way the parent
``vidq`` did (``VIDQ_LOG_LEVEL``, ``VIDQ_LOG_FORMAT``) and builds its own app (own DB pool)."""

from __future__ import annotations

import atexit
import os
import tempfile
from pathlib import Path

from fastapi import FastAPI

from api.balance import Balancer, LoadBoard

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when it is imported
BOARD_FILE = "api-load.board"  # in the metrics folder: the processes' shared load (api.balance)


def prepare_multiprocess_metrics() -> Path:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at an empty folder (a new temporary one unless the operator
    chose one), before any API process starts: values left by an earlier run would be summed in."""
    chosen = os.environ.get(MULTIPROC_ENV)
    folder = Path(chosen) if chosen else Path(tempfile.mkdtemp(prefix="vidq-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("*.db"), folder / BOARD_FILE]:
        stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder


def _balancer() -> Balancer | None:
    """The balance between the processes of ``vidq api --workers N`` (None when this app was started
    some other way, without the shared folder)."""
    folder = os.environ.get(MULTIPROC_ENV)
    if not folder:
        return None
    board = LoadBoard(Path(folder) / BOARD_FILE)
    atexit.register(board.release)
    return Balancer(board)


def create_served_app() -> FastAPI:
    from api.app import create_app
    from jobs.logs import configure_logging
    from vidq.gc_tuning import tune_for_serving

    configure_logging(
        level=os.environ.get("VIDQ_LOG_LEVEL", "INFO"),
        fmt=os.environ.get("VIDQ_LOG_FORMAT", "text").lower(),
        service=True,
    )
    app = create_app(balancer=_balancer())
    tune_for_serving()
    return app
