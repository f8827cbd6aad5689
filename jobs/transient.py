"""Which failures are transient: a dependency briefly unreachable, not a problem with the job.

A render ended by one of these is requeued with back-off (``jobs.execution.retry_owned``), up to
``VIDQ_MAX_ATTEMPTS``; anything else fails the job at once. The code names what failed, so a job
that finally fails says what kept failing.
"""

from __future__ import annotations

import kombu.exceptions
import redis
import urllib3
from minio.error import MinioException

from jobs.db import is_database_outage
from jobs.errors import DependencyUnavailable
from jobs.storage.s3 import is_transient as is_transient_storage_error


def _code(exc: BaseException) -> str | None:
    if isinstance(exc, DependencyUnavailable):
        return exc.code
    if is_database_outage(exc):
        return "database_unavailable"
    if isinstance(exc, kombu.exceptions.OperationalError | redis.ConnectionError | redis.TimeoutError):
        return "broker_unavailable"
    if isinstance(exc, MinioException | urllib3.exceptions.HTTPError) and is_transient_storage_error(exc):
        return "storage_unavailable"
    if isinstance(exc, ConnectionError | TimeoutError):  # a reset or timed-out socket of any client
        return "connection_error"
    return None


def transient_code(exc: BaseException) -> str | None:
    """The code of a transient failure (``storage_unavailable``, ``database_unavailable``,
    ``broker_unavailable``, ``connection_error``), looking through explicit causes; None otherwise."""
    seen: BaseException | None = exc
    while seen is not None:
        code = _code(seen)
        if code is not None:
            return code
        seen = seen.__cause__
    return None
