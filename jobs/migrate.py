"""Schema migrations run from code (``vidq migrate``), so deployments need no alembic.ini.

Also the check every command that uses the database makes first (``require_current_schema``), so a
missing ``vidq migrate`` is one clear sentence instead of an SQL error about a missing table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, make_url, pool

import migrations
from jobs.settings import Settings


class SchemaOutOfDate(RuntimeError):
    """The database's schema revision is not the code's head: ``vidq migrate`` has not run."""

    def __init__(self, current: str | None, head: str) -> None:
        self.current, self.head = current, head
        have = "has no vidq schema" if current is None else f"is at schema revision {current}"
        super().__init__(f"the database {have}, this vidq needs {head}: run `vidq migrate`")


@dataclass(frozen=True)
class MigrationReport:
    """What ``upgrade``/``downgrade`` did: the revision before and after, and each revision applied
    (or undone) in order, as ``"0004 job memory"``."""

    before: str | None
    after: str | None
    applied: list[str]


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(next(iter(migrations.__path__)))))
    config.attributes["database_url"] = database_url  # not through the ini: URLs may contain '%'
    return config


def display_url(settings: Settings) -> str:
    """The database URL with any password replaced by ``***``, safe to print and log."""
    return make_url(settings.resolved_database_url).render_as_string(hide_password=True)


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert head is not None, "migrations/versions is empty"
    return head


def current_revision(settings: Settings) -> str | None:
    """The revision the database is at (None: no schema yet). Raises SQLAlchemy's
    ``OperationalError`` when the database cannot be reached."""
    engine = create_engine(settings.resolved_database_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def require_current_schema(settings: Settings) -> None:
    """Raise ``SchemaOutOfDate`` unless the database is at the code's head revision."""
    current, head = current_revision(settings), head_revision()
    if current != head:
        raise SchemaOutOfDate(current, head)


def _describe(script: ScriptDirectory, revisions: list[str]) -> list[str]:
    return [f"{rev} {script.get_revision(rev).doc or ''}".strip() for rev in revisions]


def _path(script: ScriptDirectory, upper: str | None, lower: str | None) -> list[str]:
    """Revisions strictly above `lower` up to and including `upper`, oldest first."""
    if upper is None or upper == lower:
        return []
    revs = [r.revision for r in script.iterate_revisions(upper, lower or "base")]
    return [r for r in reversed(revs) if r != lower]


def upgrade(settings: Settings, revision: str = "head") -> MigrationReport:
    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    config = alembic_config(settings.resolved_database_url)
    before = current_revision(settings)
    command.upgrade(config, revision)
    after = current_revision(settings)
    script = ScriptDirectory.from_config(config)
    return MigrationReport(before, after, _describe(script, _path(script, after, before)))


def downgrade(settings: Settings, revision: str) -> MigrationReport:
    config = alembic_config(settings.resolved_database_url)
    before = current_revision(settings)
    command.downgrade(config, revision)
    after = current_revision(settings)
    script = ScriptDirectory.from_config(config)
    return MigrationReport(before, after, list(reversed(_describe(script, _path(script, before, after)))))
