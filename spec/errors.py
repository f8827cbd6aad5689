"""The one error base: every error that reaches a user or a job record carries its `code`.

`code` is a stable machine-readable string (`error.code` in API answers and failed jobs), `param`
the request field at fault when there is one, `message` the human sentence. The API maps errors to
HTTP statuses by class (`api/errors.py`); the worker records a failed job's `exc.code` as it is.
"""

from __future__ import annotations


class CodedError(Exception):
    """Base of the service's domain errors (`jobs.errors`), the spec's and the engine's (`engine.errors`)."""

    code: str = "error"
    param: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if param is not None:
            self.param = param
        if code is not None:
            self.code = code
