"""One logging set-up for the whole process: in JSON mode the records of vidq, uvicorn, Celery,
transformers, diffusers and Python warnings all come out as JSON lines carrying the job id."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator

import pytest

from jobs.logs import configure_logging, job_context


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def test_every_library_logs_json_with_the_job_id(capsys, restore_logging) -> None:
    import diffusers.utils.logging
    import transformers.utils.logging

    from engine.libraries import libraries_follow_the_process

    configure_logging(level="INFO", fmt="json", service=True)
    libraries_follow_the_process()
    with job_context("video_abc"):
        logging.getLogger("worker.render").info("rendering")
        transformers.utils.logging.get_logger("transformers.modeling_utils").warning("some weights were not used")
        diffusers.utils.logging.get_logger("diffusers.models").warning("a diffusers notice")
        logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/x", "1.1", 200)
        logging.getLogger("celery.app.trace").info("Task vidq.render succeeded")
        warnings.warn("a library deprecation", DeprecationWarning, stacklevel=1)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is JSON
    loggers = {r["logger"] for r in records}
    assert {"worker.render", "transformers.modeling_utils", "diffusers.models", "uvicorn.access"} <= loggers
    assert {"celery.app.trace", "py.warnings"} <= loggers
    assert all(r["job_id"] == "video_abc" for r in records)
    access = next(r for r in records if r["logger"] == "uvicorn.access")
    assert (access["method"], access["path"], access["status"]) == ("GET", "/x", 200)
    assert transformers.utils.logging.is_progress_bar_enabled() is False  # services draw no library bars
    assert diffusers.utils.logging.is_progress_bar_enabled() is False


def test_the_set_up_wins_over_what_uvicorn_and_the_libraries_configured_before(capsys, restore_logging) -> None:
    """Earlier code in the process (a test server's ``uvicorn.Config(log_level="warning")`` with its own
    handlers, a library that stopped propagation) must not keep its lines out of the one set-up."""
    import uvicorn

    uvicorn.Config(lambda scope, receive, send: None, log_level="warning")  # its handlers, WARNING levels
    logging.getLogger("diffusers").propagate = False
    assert logging.getLogger("uvicorn.access").level == logging.WARNING

    configure_logging(level="INFO", fmt="json")
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/y", "1.1", 204)
    logging.getLogger("uvicorn.error").info("Started server process")
    logging.getLogger("diffusers.models").warning("a diffusers notice")
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert {r["logger"] for r in records} == {"uvicorn.access", "uvicorn.error", "diffusers.models"}
