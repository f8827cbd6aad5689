"""`alembic upgrade head` on an empty PostgreSQL yields exactly the models, and downgrade undoes it."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from jobs import migrate
from jobs.models import Base
from jobs.settings import Settings


def test_upgrade_head_matches_the_models_and_downgrade_removes_everything(empty_database: str) -> None:
    settings = Settings(database_url=empty_database)
    migrate.upgrade(settings)
    engine = create_engine(empty_database)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
            assert diff == [], f"migrations and models differ: {diff}"
            assert set(inspect(conn).get_table_names()) == {"alembic_version", *Base.metadata.tables}

        migrate.downgrade(settings, "base")
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == {"alembic_version"}

        migrate.upgrade(settings)  # and back up again: the chain is repeatable
        with engine.connect() as conn:
            assert set(Base.metadata.tables) <= set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_migrations_also_build_the_embedded_sqlite_schema(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path)
    migrate.upgrade(settings)
    engine = create_engine(settings.resolved_database_url)
    with engine.connect() as conn:
        assert set(Base.metadata.tables) <= set(inspect(conn).get_table_names())
    engine.dispose()
