"""What the API process holds for its lifetime, built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from jobs.dispatch import Publisher, Sweeper
from jobs.settings import Settings
from jobs.storage import Storage


@dataclass
class AppState:
    settings: Settings
    session_factory: sessionmaker[Session]
    storage: Storage
    celery: Celery
    publisher: Publisher
    sweeper: Sweeper | None
