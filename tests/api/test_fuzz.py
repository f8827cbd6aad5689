"""Issue 17: schemathesis over the API's own OpenAPI schema, against the real app on PostgreSQL
served by uvicorn: generated requests (valid and schema-violating ones), each sent with a client key
(``/v1``) or an admin key (``/admin``, ``/metrics``), must never get a 5xx.

``VIDQ_FUZZ_EXAMPLES`` (default 100) is the number of cases per operation; a CI run makes a few
thousand requests in all.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error

from api.app import create_app
from jobs.db import make_engine, make_session_factory, session_scope
from jobs.keys import create_key
from jobs.settings import Settings
from vidq.embedded import free_port

EXAMPLES = int(os.environ.get("VIDQ_FUZZ_EXAMPLES", "100"))


@pytest.fixture(scope="module")
def fuzz_app(admin_settings: Settings) -> Iterator[tuple[str, dict[str, str], object]]:
    """(base URL, keys by role, the app) of a server on loopback."""
    app = create_app(admin_settings.model_copy(update={"webhook_allowed_hosts": "127.0.0.1:*"}))
    engine = make_engine(admin_settings)
    with session_scope(make_session_factory(engine)) as session:
        keys = {
            "client": create_key(session=session, name="fuzz-client").plaintext,
            "admin": create_key(session=session, name="fuzz-admin", is_admin=True).plaintext,
        }
    engine.dispose()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", keys, app
    server.should_exit = True
    thread.join(timeout=10)


# The schema does not depend on the settings: read it from an app that is never started.
# Left out: event streams (a valid one stays open by design).
schema = schemathesis.openapi.from_dict(create_app(Settings(secret_key="schema-only")).openapi()).exclude(
    path_regex=r".*/events$"
)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases on every run: CI failures reproduce
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_no_generated_request_gets_a_server_error(case, fuzz_app) -> None:  # type: ignore[no-untyped-def]
    base_url, keys, _ = fuzz_app
    role = "admin" if case.path.startswith(("/admin", "/metrics")) else "client"
    response = case.call(base_url=base_url, headers={"Authorization": f"Bearer {keys[role]}"}, timeout=30)
    case.validate_response(response, checks=[not_a_server_error])
