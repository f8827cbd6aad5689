from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from jobs.db import make_engine, make_session_factory, session_scope
from jobs.keys import create_key
from jobs.models import ApiKey
from jobs.settings import Settings


@pytest.fixture(scope="module")
def db_settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, heartbeat_timeout_s=4.0, redispatch_after_s=2.0, max_attempts=2)


@pytest.fixture(scope="module")
def session_factory(db_settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_settings)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def owner(session_factory: sessionmaker[Session]) -> ApiKey:
    with session_scope(session_factory) as session:
        return create_key(session=session, name="test").record
