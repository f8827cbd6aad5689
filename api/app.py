"""The FastAPI application factory."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import anyio
import anyio.to_thread
from celery import Celery
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from api.admin_pages import STATIC_DIR, install_admin_handlers
from api.balance import Balancer
from api.edge import EdgeMiddleware
from api.errors import install_error_handlers
from api.logging import JobIdMiddleware
from api.metrics_middleware import HttpMetricsMiddleware
from api.openapi import install_openapi
from api.routes import admin, docs, health, loras, metrics, models, unsupported, video_events, videos, webhooks
from api.state import AppState
from jobs.affinity import affinity_router
from jobs.broker import make_celery
from jobs.db import make_engine, make_session_factory
from jobs.dispatch import CeleryPublisher, make_markers, make_sweeper
from jobs.events import make_event_bus
from jobs.keys import KeyCache
from jobs.readiness import ReadinessProbe
from jobs.settings import TEARDOWN_THREADS, Settings, get_settings
from jobs.storage import Storage, make_storage
from jobs.workers import make_worker_registry


def readiness_probe(session_factory: sessionmaker[Session], app: Celery, storage: Storage) -> ReadinessProbe:
    """Read-only checks of the three dependencies (see jobs.readiness)."""

    def database() -> None:
        with session_factory() as session:
            session.execute(text("SELECT 1"))

    def broker() -> None:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=1)

    return ReadinessProbe({"database": database, "broker": broker, "storage": storage.check})


def build_state(settings: Settings, celery_app: Celery | None = None) -> AppState:
    app = celery_app or make_celery(settings)
    session_factory = make_session_factory(make_engine(settings))
    storage = make_storage(settings)
    events = make_event_bus(settings)
    workers = make_worker_registry(settings)
    publisher = CeleryPublisher(app, make_markers(settings))  # render messages and webhook deliveries
    # The process's relay (the state changes its routes commit: webhooks, live messages, render
    # messages routed to warm workers) and, unless VIDQ_SWEEPER_ENABLED=false, the repairs.
    sweeper = make_sweeper(
        settings,
        app,
        session_factory,
        storage,
        bus=events,
        route=affinity_router(workers.list, heartbeat_timeout_s=settings.heartbeat_timeout_s),
        publisher=publisher,
    )
    return AppState(
        settings=settings,
        session_factory=session_factory,
        storage=storage,
        celery=app,
        publisher=publisher,
        events=events,
        sweeper=sweeper,
        workers=workers,
        readiness=readiness_probe(session_factory, app, storage),
        key_cache=KeyCache(settings.api_key_cache_s),
    )


OPENAPI_TAGS = [
    {"name": "videos", "description": "Generation jobs, shaped like OpenAI's Videos API."},
    {"name": "models", "description": "What each model renders: sizes, frames, fps, defaults, memory."},
    {"name": "webhooks", "description": "Signed event deliveries (Standard Webhooks, OpenAI's envelope)."},
    {"name": "health", "description": "Liveness and readiness."},
    {"name": "operations", "description": "Prometheus metrics."},
    {"name": "not supported", "description": "Calls of OpenAI's API that vidq answers with `unsupported_endpoint`."},
]


def create_app(
    settings: Settings | None = None,
    *,
    celery_app: Celery | None = None,
    listen_host: str | None = None,
    balancer: Balancer | None = None,
) -> FastAPI:
    """The app. ``listen_host`` is where it will listen, when the caller knows: embedded mode on
    loopback is the one place the default secret key is allowed (see Settings.require_service_secret)."""
    settings = settings or get_settings()
    settings.require_service_secret(host=listen_host)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The route threads (AnyIO's default limiter runs sync routes and dependencies), FIFO.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        state = build_state(settings, celery_app)
        state.teardown_threads = anyio.CapacityLimiter(TEARDOWN_THREADS)
        with suppress(Exception):  # /readyz reports an unreachable store; reads still work
            state.storage.ensure_ready()  # creating the bucket is start-up's job, never /readyz's
        state.sweeper.start()
        app.state.vidq = state
        # Everything start-up made (modules, the app, the ORM's mappers, the engine's imports) lives as
        # long as the process: frozen out of the collector's reach, so a full collection walks only
        # what requests made since (unfrozen, each one stopped the process for 100-400 ms under load).
        gc.collect()
        gc.freeze()
        yield
        state.sweeper.stop()
        state.readiness.close()

    app = FastAPI(
        title="vidq",
        version="0.1.0",
        summary="Text-to-video generation jobs, shaped like OpenAI's Videos API.",
        lifespan=lifespan,
        openapi_tags=OPENAPI_TAGS,
        docs_url=None,  # served by api.routes.docs from the app's own assets
        redoc_url=None,
    )
    install_openapi(app)
    install_error_handlers(app)
    install_admin_handlers(app, media_origin=settings.s3_public_endpoint or settings.s3_endpoint)
    app.add_middleware(JobIdMiddleware)
    app.add_middleware(
        EdgeMiddleware,
        max_body_bytes=settings.max_request_body_bytes,
        upload_max_bytes=settings.lora_max_upload_mb * 2**20 + 2**20,  # the file plus its form fields
        max_concurrency=settings.api_max_concurrency,
        balancer=balancer,  # one of several processes (vidq.serve): even out their connections
    )
    app.add_middleware(HttpMetricsMiddleware)  # added last: the outermost, it sees every answer
    app.mount("/admin/static", StaticFiles(directory=STATIC_DIR), name="admin-static")
    app.mount(docs.ASSETS, StaticFiles(directory=STATIC_DIR / "docs"), name="docs-static")
    app.include_router(docs.router)
    app.include_router(health.router)
    app.include_router(unsupported.router)  # before /v1/videos/{video_id}/...: /v1/videos/characters/x is not a video
    app.include_router(videos.router)
    app.include_router(video_events.router)
    app.include_router(webhooks.router)
    app.include_router(models.router)
    app.include_router(loras.router)
    app.include_router(admin.router)
    app.include_router(metrics.router)
    return app
