"""Liveness (the process answers) and readiness (its dependencies answer)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import StateDep
from api.errors import error_body
from api.openapi import errors

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses=errors(503))
def readyz(state: StateDep) -> JSONResponse:
    def database() -> None:
        with state.session_factory() as session:
            session.execute(text("SELECT 1"))

    def broker() -> None:
        with state.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)

    checks = {"database": database, "broker": broker, "storage": state.storage.ensure_ready}
    for name, check in checks.items():
        try:
            check()
        except Exception as exc:
            log.warning("readiness: %s unreachable: %s", name, exc)
            return JSONResponse(error_body("unavailable", f"{name} is unreachable", name, status=503), status_code=503)
    return JSONResponse({"status": "ready", "checks": dict.fromkeys(checks, "ok")})
