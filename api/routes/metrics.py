"""``GET /metrics``: Prometheus text format, every name prefixed ``vidq_`` (see ``jobs.admin.metrics``).

It needs an admin key (``Authorization: Bearer``, or the dashboard's cookie) unless
``VIDQ_METRICS_PUBLIC=true``: queue names, worker hosts and volumes are operator information.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import StateDep, _bearer, get_admin_session
from api.openapi import errors
from jobs.admin.metrics import render_metrics

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}, **errors(401, 403)})
def metrics(
    request: Request,
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Response:
    if not state.settings.metrics_public:
        get_admin_session(request, state, credentials)
    body = render_metrics(
        session_factory=state.session_factory,
        workers=state.workers,
        heartbeat_timeout_s=state.settings.heartbeat_timeout_s,
    )
    return Response(body, media_type=CONTENT_TYPE_LATEST)
