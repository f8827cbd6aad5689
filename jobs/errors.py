"""Domain exceptions. Each carries a stable machine-readable ``code`` (`spec.errors.CodedError`);
the API maps classes to HTTP statuses in one place (``api/errors.py``) and the worker records a
failed job's ``exc.code``."""

from __future__ import annotations

from spec.errors import CodedError


class DomainError(CodedError):
    """An error of the job domain, answered to a client with its HTTP status."""


class InvalidParameter(DomainError):
    code = "invalid_parameter"


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class Gone(DomainError):
    code = "gone"


class PayloadTooLarge(DomainError):
    """An upload over its size limit (HTTP 413)."""

    code = "file_too_large"


class TooManyRequests(DomainError):
    """A per-client limit reached (HTTP 429), e.g. open event streams."""

    code = "rate_limited"


class Unauthenticated(DomainError):
    code = "invalid_api_key"


class Forbidden(DomainError):
    code = "forbidden"


class JobCancelled(DomainError):
    """Raised inside a render when the job was cancelled, deleted or taken by another worker."""

    code = "cancelled"


class DependencyUnavailable(Exception):
    """A service the operation needs (``database``, ``broker`` or ``storage``) did not answer in time.

    Transient by nature: the API answers 503 with ``Retry-After`` naming the dependency, and a render
    that hits one is requeued (with back-off, counting the attempt) instead of failed for good.
    """

    def __init__(self, dependency: str, message: str) -> None:
        super().__init__(message)
        self.dependency = dependency
        self.message = message
        self.code = f"{dependency}_unavailable"
