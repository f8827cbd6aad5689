"""Liveness (the process answers) and readiness (its dependencies answer, decided within 2 s)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import StateDep
from api.errors import RETRY_AFTER_S, error_body
from api.openapi import errors

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses=errors(503))
def readyz(state: StateDep) -> JSONResponse:
    problems = state.readiness.run()
    down = [name for name, problem in problems.items() if problem is not None]
    if down:
        return JSONResponse(
            error_body("unavailable", "; ".join(str(problems[name]) for name in down), down[0], status=503),
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    return JSONResponse({"status": "ready", "checks": dict.fromkeys(problems, "ok")})
