from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from jobs.db import make_engine, make_session_factory, session_scope
from jobs.keys import create_key
from jobs.settings import Settings


@pytest.fixture(scope="module")
def admin_settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """PostgreSQL, an in-process broker and a local folder: the admin side needs no worker here."""
    return Settings(
        database_url=database_url,
        data_dir=tmp_path_factory.mktemp("admin-data"),
        sweeper_enabled=False,
        secret_key="admin-test-secret",
    )


@pytest.fixture(scope="module")
def factory(admin_settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(admin_settings)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def app_client(admin_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(admin_settings)) as client:
        yield client


@pytest.fixture
def new_key(factory: sessionmaker[Session]) -> Callable[..., tuple[int, str]]:
    def _make(name: str = "client", admin: bool = False) -> tuple[int, str]:
        with session_scope(factory) as session:
            created = create_key(session=session, name=name, is_admin=admin)
            return created.record.id, created.plaintext

    return _make


def relay_now(client: TestClient) -> None:
    """Run the app's relay pass now (the relay thread runs it soon after each commit, on its own
    schedule): the webhook deliveries and outbox rows of every change committed so far exist after it."""
    assert client.app.state.vidq.sweeper.relay.run() is not None  # type: ignore[attr-defined]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]*)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)


def login(client: TestClient, key: str) -> str:
    """Log in through the form (cookies stay on ``client``); returns the session's CSRF token."""
    form = client.get("/admin/login")
    response = client.post(
        "/admin/login",
        data={"api_key": key, "csrf_token": csrf_from(form.text), "next": "/admin/jobs"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return csrf_from(client.get("/admin/jobs").text)
