"""Logging for every vidq process: one line per record, as text or JSON (``VIDQ_LOG_FORMAT``), each
carrying the id of the job it concerns.

The job id travels in a context variable: the API sets it for requests about one job, the worker
for the render it runs, webhook delivery for the job whose event it sends. A filter copies it onto
every record, so libraries' records (httpx, SQLAlchemy) carry it too.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

job_id_var: ContextVar[str | None] = ContextVar("vidq_job_id", default=None)

_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "job_id"}


@contextmanager
def job_context(job_id: str | None) -> Iterator[None]:
    """Records logged inside carry ``job_id``."""
    token = job_id_var.set(job_id)
    try:
        yield
    finally:
        job_id_var.reset(token)


class JobIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            record.job_id = job_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "job_id", ...extra, "exc"}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "job_id": getattr(record, "job_id", None) or job_id_var.get(),
            "process": record.process,
        }
        for key, value in record.__dict__.items():  # fields passed with extra={...}
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def json_line(level: str, logger: str, message: str) -> str:
    """One JSON log line built without the logging machinery, for code that must not take its locks
    (signal handlers); the same keys as ``JsonFormatter``."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    entry = {"ts": now, "level": level, "logger": logger, "message": message, "job_id": job_id_var.get()}
    return json.dumps({**entry, "process": os.getpid()})


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [job=%(job_id)s]: %(message)s"

# Libraries that speak at INFO about things an operator does not act on (every HTTP request of a
# client library, alembic's set-up lines): WARNING and up only. uvicorn's access log, Celery's task
# lines and vidq's own records keep the chosen level.
QUIET_LOGGERS = (
    "alembic",
    "httpx",
    "httpcore",
    "urllib3",
    "botocore",
    "boto3",
    "s3transfer",
    "kombu",
    "amqp",
    "asyncio",
    "multipart",
    "python_multipart",
    "filelock",
    "huggingface_hub",
    "transformers",
    "diffusers",
    "torch",
)
# Loggers that libraries give handlers of their own; emptied so that every line goes through ours.
OWN_HANDLER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "transformers", "diffusers")


class AccessLogFields(logging.Filter):
    """uvicorn's access lines as fields too (``client``, ``method``, ``path``, ``status``), so a JSON
    log can be filtered by route and status without parsing the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _http_version, status = record.args
            record.client, record.method, record.path, record.status = client, method, path, status
        return True


def configure_logging(*, level: str = "WARNING", fmt: str = "text", service: bool = False) -> None:
    """One stderr handler in the chosen format for every logger of the process (vidq, uvicorn,
    Celery, transformers, diffusers, Python warnings). ``service=True`` (api, worker, demo) also
    turns the libraries' progress bars off: a service's log is read later, by people and machines."""
    handler = logging.StreamHandler()
    handler.addFilter(JobIdFilter())
    handler.addFilter(AccessLogFields())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Whatever set these loggers up before (uvicorn.Config(log_level=...) sets uvicorn's levels, the
    # libraries stop propagation, logging.config disables loggers): they follow the root's level again.
    for name in (*OWN_HANDLER_LOGGERS, "uvicorn.asgi"):
        lib = logging.getLogger(name)
        for old in list(lib.handlers):
            lib.removeHandler(old)
        lib.propagate = True
        lib.disabled = False
        lib.setLevel(logging.NOTSET)
    quiet = max(logging.WARNING, root.level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
    # warnings.warn (Celery's deprecations, torch's) become records too. Off first: captureWarnings(True)
    # does nothing when called before, even if something has put its own warnings.showwarning since.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    if service:
        disable_library_progress_bars()


def disable_library_progress_bars() -> None:
    """huggingface_hub (downloads) and transformers (loading) follow ``HF_HUB_DISABLE_PROGRESS_BARS``;
    the engine tells diffusers the same when it imports it (``engine.models.components``)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        from huggingface_hub.utils import disable_progress_bars
    except ImportError:  # the API-only install has no Hugging Face libraries at all
        return
    disable_progress_bars()
