"""Expected failures of the ``vidq`` command, each turned into one line that names the problem and
the fix (never a traceback, never a secret).

Commands raise ``CliError`` for what they detect themselves; ``explain`` maps the exceptions that
come out of the layers below (settings, database, API client, model lookup) onto such a line.
Anything it does not recognise is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import socket

from pydantic import ValidationError

EXIT_FAILED = 1
# Top-level modules of the [engine] extra: missing in the API-only install (`pip install vidq`).
ENGINE_MODULES = frozenset(
    {"torch", "diffusers", "transformers", "huggingface_hub", "accelerate", "imageio", "safetensors"}
)
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure the user can fix; the message is the whole story, on one line."""


def settings_error_line(exc: ValidationError) -> str:
    """One line for invalid ``VIDQ_`` settings, naming each variable; input values are left out on
    purpose (pydantic's own message would echo them, and they may be secrets)."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        field = ".".join(str(p) for p in error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"VIDQ_{field.upper()}: {message}" if field else message)
    return "invalid settings: " + "; ".join(parts)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def explain(exc: BaseException, *, database: str | None = None) -> str | None:
    """The one line for an expected failure, or None for a bug. `database` is the URL to name
    (password already hidden) when a database error comes up."""
    from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

    from engine.models.locate import ModelNotInstalledError
    from jobs.migrate import SchemaOutOfDate
    from jobs.settings import MissingSecretKey
    from spec.registry import UnknownModelError
    from vidq.client import APIConnectionError, APIError, AuthenticationError

    if isinstance(exc, CliError | SchemaOutOfDate | ModelNotInstalledError | APIConnectionError | MissingSecretKey):
        return str(exc)
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in ENGINE_MODULES:
        return f"this needs the engine, which is not installed ({exc.name} is missing): pip install 'vidq[engine]'"
    if isinstance(exc, ValidationError):
        return settings_error_line(exc)
    if isinstance(exc, UnknownModelError):
        return f"{exc}: `vidq models list` shows them"
    where = f" at {database}" if database else ""
    # SQL errors: only the driver's first line, never the statement or its parameters (key hashes).
    if isinstance(exc, OperationalError):
        return (
            f"cannot use the database{where}: {_first_line(exc.orig)}; is it running, and is VIDQ_DATABASE_URL right?"
        )
    if isinstance(exc, ProgrammingError) and "does not exist" in str(exc.orig):
        return f"the database{where} lacks vidq's tables ({_first_line(exc.orig)}): run `vidq migrate`"
    if isinstance(exc, DBAPIError):
        return f"database error{where}: {_first_line(exc.orig)}"
    if isinstance(exc, AuthenticationError):
        return f"the API refused the key ({exc.message}): set VIDQ_API_KEY or --api-key to one from `vidq keys create`"
    if isinstance(exc, APIError):
        return f"the API answered {exc}"
    return None


def ensure_port_free(host: str, port: int) -> None:
    """Raise CliError when nothing can listen on host:port (checked before the server starts, so
    the answer is one line and not a server's traceback)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # what uvicorn sets: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CliError(
                    f"port {port} on {host} is already in use: stop the process holding it "
                    f"(`ss -ltnp 'sport = :{port}'` shows it) or choose another with --port"
                ) from None
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
