"""Schema migrations run from code (``vidq migrate``), so deployments need no alembic.ini."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations
from jobs.settings import Settings


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(next(iter(migrations.__path__)))))
    config.attributes["database_url"] = database_url  # not through the ini: URLs may contain '%'
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings.resolved_database_url), revision)


def downgrade(settings: Settings, revision: str) -> None:
    command.downgrade(alembic_config(settings.resolved_database_url), revision)
