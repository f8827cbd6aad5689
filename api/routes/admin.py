"""The admin dashboard: ``/admin`` pages (server-rendered) and the actions behind their forms.

Handlers stay thin: queries and changes live in ``jobs.admin`` and the job domain; every action
is audited in the same transaction as the change, then redirects back (POST → 303 → GET).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Annotated, Literal
from urllib.parse import urlencode

import anyio.to_thread
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy import select

from api.admin_auth import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    new_session_cookie,
    revoke_session,
    safe_next,
)
from api.admin_pages import render, templates
from api.content import Variant, content_response, input_reference_response
from api.deps import AdminAction, AdminUser, SessionDep, SettingsDep, StateDep, StorageDep
from api.routes.video_events import SSE_HEADERS
from api.state import AppState
from jobs import keys as api_keys
from jobs.admin import audit, stats
from jobs.admin.jobs import JobFilter, cancel_jobs, dead_letters, get_any_job, retry_jobs, search_jobs
from jobs.attempts import list_attempts
from jobs.db import session_scope
from jobs.errors import Conflict, DomainError, InvalidParameter
from jobs.live import read_views
from jobs.loras import all_loras
from jobs.models import ApiKey, Job, WebhookDelivery
from jobs.public import VideoPublic
from jobs.states import JobStatus, is_terminal
from jobs.validation import list_model_names
from jobs.webhooks.endpoints import list_deliveries, redeliver
from spec.stages import Stage

log = logging.getLogger(__name__)
router = APIRouter(prefix="/admin", include_in_schema=False)

PAGE_SIZE = 50
LIVE_POLL_S = 0.5
LIVE_MAX_S = 600.0  # a live stream ends after this; the page's script reconnects
STAGES = tuple(stage.value for stage in Stage)  # the timeline's order


def _back(path: str, notice: str | None = None, **params: str) -> RedirectResponse:
    query = {k: v for k, v in params.items() if v}
    if notice:
        query["notice"] = notice
    return RedirectResponse(f"{path}?{urlencode(query)}" if query else path, status_code=303)


def _parse_when(value: str | None, param: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidParameter(f"{param} is not a date and time", param=param) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _key_id(key: str | None) -> int | None:
    """The ``key`` filter as a key id: digits within the id column's range, else 422 (never a
    database error from an out-of-range number)."""
    if not key:
        return None
    if not key.isascii() or not key.isdigit() or int(key) >= 2**31:
        raise InvalidParameter("key must be an API key id (a positive integer)", param="key")
    return int(key)


def _filter(
    status: list[str], model: str | None, key: str | None, since: str | None, until: str | None, q: str | None
) -> JobFilter:
    return JobFilter(
        status=[s for s in status if s in JobStatus._value2member_map_],
        model=model or None,
        owner_id=_key_id(key),
        created_from=_parse_when(since, "from"),
        created_to=_parse_when(until, "to"),
        prompt=q or None,
    )


# ---- login ------------------------------------------------------------------------------------------


def _login_page(request: Request, *, error: str | None = None, status_code: int = 200) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(
        request,
        "admin/login.html",
        {"login_csrf": token, "next": safe_next(request.query_params.get("next")), "error": error},
        status_code=status_code,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/admin"
    )
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> HTMLResponse:
    return _login_page(request)


@router.post("/login", response_model=None)
def login(
    request: Request,
    state: StateDep,
    api_key: Annotated[str, Form()],
    csrf_token: Annotated[str, Form()] = "",
    next_path: Annotated[str, Form(alias="next")] = "/admin",
) -> Response:
    """Check an admin key once and set the session cookie. The form carries a token that must match
    the cookie set with the form (login CSRF: a third-party page cannot log you in as itself)."""
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not secrets.compare_digest(expected, csrf_token):
        return _login_page(request, error="The form expired; please try again.", status_code=403)
    client = request.client.host if request.client else "unknown"
    wait_s = state.login_throttle.retry_after_s(client)
    if wait_s:
        response = _login_page(request, error=f"Too many failed attempts; try again in {wait_s} s.", status_code=429)
        response.headers["Retry-After"] = str(wait_s)
        return response
    with session_scope(state.session_factory) as session:
        try:
            key = api_keys.authenticate(session=session, plaintext=api_key.strip())
        except DomainError:
            state.login_throttle.failed(client)
            log.warning("failed admin login from %s", client)  # never the key itself
            return _login_page(request, error="That key is not valid.", status_code=401)
        if not key.is_admin:
            state.login_throttle.failed(client)
            log.warning("admin login with a client key (key %s) from %s", key.id, client)
            return _login_page(request, error="That key is not an admin key.", status_code=403)
        state.login_throttle.succeeded(client)
        audit.record(session=session, actor=key, action="login", target=f"key:{key.id}")
        cookie = new_session_cookie(state.settings, key)
    response = RedirectResponse(safe_next(next_path), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=state.settings.admin_session_ttl_s,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https" or state.settings.environment == "production",
        path="/",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/admin")
    return response


@router.post("/logout")
def logout(request: Request, admin: AdminAction, session: SessionDep, state: StateDep) -> RedirectResponse:
    if admin.via == "cookie":
        revoke_session(session=session, settings=state.settings, cookie=request.cookies.get(SESSION_COOKIE))
    audit.record(session=session, actor=admin.key, action="logout", target=f"key:{admin.key.id}")
    session.commit()
    response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# ---- overview ---------------------------------------------------------------------------------------


@router.get("", response_class=HTMLResponse)
def overview_page(request: Request, admin: AdminUser, session: SessionDep, state: StateDep) -> HTMLResponse:
    workers = state.workers.list()
    online = [w for w in workers if not w.is_lost(timeout_s=state.settings.heartbeat_timeout_s)]
    return render(
        request,
        "admin/overview.html",
        admin,
        page="overview",
        ov=stats.overview(session=session),
        workers_online=len(online),
        workers_total=len(workers),
        gpus_online=sum(len(w.gpus) for w in online),
    )


# ---- jobs -------------------------------------------------------------------------------------------


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    status: Annotated[list[str], Query()] = [],  # noqa: B006 (FastAPI copies query defaults)
    model: str | None = None,
    key: str | None = None,
    since: Annotated[str | None, Query(alias="from")] = None,
    until: Annotated[str | None, Query(alias="to")] = None,
    q: str | None = None,
    sort: Literal["created", "model", "status", "attempts"] = "created",
    order: Literal["asc", "desc"] = "desc",
    cursor: str | None = None,
) -> HTMLResponse:
    where = _filter(status, model, key, since, until, q)
    page = search_jobs(session=session, where=where, sort=sort, desc=order == "desc", cursor=cursor, limit=PAGE_SIZE)
    params = {
        "status": status,
        "model": model or "",
        "key": key or "",
        "from": since or "",
        "to": until or "",
        "q": q or "",
    }
    base_query = urlencode({k: v for k, v in params.items() if v}, doseq=True)
    return render(
        request,
        "admin/jobs.html",
        admin,
        page="jobs",
        jobs=page.jobs,
        next_cursor=page.next_cursor,
        params=params,
        sort=sort,
        order=order,
        base_query=base_query,
        statuses=[s.value for s in JobStatus],
        models=list_model_names(),
        keys=list(session.scalars(select(ApiKey).order_by(ApiKey.id))),
        key_names={k.id: k.name for k in session.scalars(select(ApiKey))},
    )


@router.post("/jobs/bulk")
def bulk_action(
    admin: AdminAction,
    session: SessionDep,
    state: StateDep,
    action: Annotated[Literal["cancel", "retry"], Form()],
    scope: Annotated[Literal["selected", "filtered"], Form()] = "selected",
    ids: Annotated[list[str], Form()] = [],  # noqa: B006
    status: Annotated[list[str], Form()] = [],  # noqa: B006
    model: Annotated[str | None, Form()] = None,
    key: Annotated[str | None, Form()] = None,
    since: Annotated[str | None, Form(alias="from")] = None,
    until: Annotated[str | None, Form(alias="to")] = None,
    q: Annotated[str | None, Form()] = None,
) -> RedirectResponse:
    """Cancel or retry the ticked jobs, or every job the current filters match (at most MAX_BULK)."""
    where = _filter(status, model, key, since, until, q)
    target_ids = ids if scope == "selected" else None
    if scope == "selected" and not ids:
        return _back("/admin/jobs", "Nothing selected.")
    act = cancel_jobs if action == "cancel" else retry_jobs
    result = act(session=session, ids=target_ids, where=where if scope == "filtered" else None)
    audit.record(
        session=session,
        actor=admin.key,
        action=f"jobs.bulk_{action}",
        target=f"{scope}:{len(result.changed)} jobs",
        detail={"changed": result.changed, "skipped": result.skipped, "scope": scope},
    )
    session.commit()
    verb = "Cancelled" if action == "cancel" else "Requeued"
    params = {"model": model or "", "key": key or "", "from": since or "", "to": until or "", "q": q or ""}
    return _back("/admin/jobs", f"{verb} {len(result.changed)}, skipped {len(result.skipped)}.", **params)


def _update(job: VideoPublic) -> dict[str, object]:
    """What the dashboard's script draws for one job."""
    return {
        "id": job.id,
        "status": job.status,
        "progress": job.progress,
        "stage": job.stage,
        "step": job.current_step,
        "total_steps": job.total_steps,
    }


@router.get("/jobs/live")
async def live_jobs(request: Request, admin: AdminUser, state: StateDep, ids: str = "") -> StreamingResponse:
    """One Server-Sent Events stream for every job on a page (browsers allow only ~6 streams per host):
    an ``update`` event with ``{id, status, progress, stage, step, total_steps}`` whenever a job
    changes. Read as the clients' streams read it (``jobs.live.read_views``): every state change from
    the event table, in order, then the row's progress; ends once all are final.

    An admin key holds at most `VIDQ_MAX_STREAMS_PER_KEY` of these open at once (429 past that),
    counted apart from its `/v1/videos/{id}/events` streams."""
    wanted = [i for i in ids.split(",") if i][:200]
    key_id = admin.key.id
    state.admin_streams.acquire(key_id, state.settings.max_streams_per_key)  # 429 past the cap

    async def frames() -> AsyncIterator[str]:
        # released however the stream ends (client gone included)
        with state.admin_streams.held(key_id):
            async with aclosing(_live_frames(request, state, wanted)) as live:
                async for frame in live:
                    yield frame

    return StreamingResponse(frames(), media_type="text/event-stream", headers=SSE_HEADERS)


async def _live_frames(request: Request, state: AppState, wanted: list[str]) -> AsyncIterator[str]:
    """The frames of :func:`live_jobs` until its jobs are final, the client leaves or ``LIVE_MAX_S``."""
    seqs: dict[str, int] = {}
    last: dict[str, dict[str, object]] = {}
    loop = asyncio.get_running_loop()
    started = last_sent = loop.time()
    while loop.time() - started < LIVE_MAX_S and not await request.is_disconnected():
        after = {job_id: seqs.get(job_id, 0) for job_id in wanted} if seqs else None
        views = await anyio.to_thread.run_sync(
            lambda after=after: read_views(state.session_factory, wanted, None, after_seq=after)
        )
        found = {job_id: view for job_id, view in views.items() if view.job is not None}
        for job_id, view in found.items():
            assert view.job is not None
            updates = [_update(event.job) for event in view.events] + [_update(view.job)]
            seqs[job_id] = view.last_seq
            for update in updates:
                if last.get(job_id) != update:
                    last[job_id] = update
                    last_sent = loop.time()
                    yield f"event: update\ndata: {json.dumps(update)}\n\n"
        if not found or all(view.job is not None and is_terminal(view.job.status) for view in found.values()):
            yield "event: done\ndata: {}\n\n"
            return
        if loop.time() - last_sent > state.settings.sse_heartbeat_s:
            last_sent = loop.time()
            yield ": heartbeat\n\n"
        await asyncio.sleep(LIVE_POLL_S)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, admin: AdminUser, session: SessionDep, state: StateDep) -> HTMLResponse:
    job = get_any_job(session=session, job_id=job_id)
    owner = session.get(ApiKey, job.owner_id)
    assert owner is not None  # jobs are deleted with their key
    deliveries: list[WebhookDelivery] = list_deliveries(session=session, owner=owner, job_id=job.id)
    attempts = list_attempts(session=session, job_id=job.id)
    timings = dict(job.stage_timings or {})
    timeline: list[tuple[str, float]] = []
    if job.started_at is not None:
        timeline.append(("queued", (job.started_at - job.created_at).total_seconds()))
    if "model_load" in timings:
        timeline.append(("model_load", float(timings["model_load"])))
    timeline += [(stage, float(timings[stage])) for stage in STAGES if stage in timings]
    timeline += [(name, float(s)) for name, s in timings.items() if name not in STAGES and name != "model_load"]
    total = sum(s for _, s in timeline) or 1.0
    workers = {w.worker_id: w for w in state.workers.list()}
    return render(
        request,
        "admin/job.html",
        admin,
        page="jobs",
        job=job,
        owner=owner,
        deliveries=deliveries,
        attempts=attempts,
        timeline=[(name, s, s / total) for name, s in timeline],
        timeline_total=total,
        workers=workers,
        heartbeat_timeout_s=state.settings.heartbeat_timeout_s,
        max_attempts=state.settings.max_attempts,
    )


@router.post("/jobs/{job_id}/cancel")
def cancel_one(job_id: str, admin: AdminAction, session: SessionDep, state: StateDep) -> RedirectResponse:
    get_any_job(session=session, job_id=job_id)
    result = cancel_jobs(session=session, ids=[job_id])
    if not result.changed:
        raise Conflict(f"video {job_id} is already finished and cannot be cancelled", code="not_cancellable")
    audit.record(session=session, actor=admin.key, action="job.cancel", target=job_id)
    session.commit()
    return _back(f"/admin/jobs/{job_id}", "Cancelled.")


@router.post("/jobs/{job_id}/retry")
def retry_one(job_id: str, admin: AdminAction, session: SessionDep, state: StateDep) -> RedirectResponse:
    get_any_job(session=session, job_id=job_id)
    result = retry_jobs(session=session, ids=[job_id])
    if not result.changed:
        raise Conflict(f"video {job_id} is not failed; only failed jobs can be retried", code="not_retryable")
    audit.record(session=session, actor=admin.key, action="job.retry", target=job_id)
    session.commit()
    return _back(f"/admin/jobs/{job_id}", "Requeued.")


@router.post("/jobs/{job_id}/webhooks/{delivery_id}/redeliver")
def redeliver_webhook(
    job_id: str, delivery_id: str, admin: AdminAction, session: SessionDep, state: StateDep
) -> RedirectResponse:
    job = get_any_job(session=session, job_id=job_id)
    owner = session.get(ApiKey, job.owner_id)
    assert owner is not None
    redeliver(session=session, owner=owner, job_id=job_id, delivery_id=delivery_id)
    audit.record(
        session=session, actor=admin.key, action="webhook.redeliver", target=delivery_id, detail={"job": job_id}
    )
    session.commit()
    state.sweeper.kick()  # publish it now, not at the next sweep (a delivery, not a state change)
    return _back(f"/admin/jobs/{job_id}", f"Redelivery of {delivery_id} queued.")


@router.get("/jobs/{job_id}/content", response_model=None)
def job_content(
    job_id: str,
    admin: AdminUser,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    variant: Variant = "video",
) -> Response:
    """A finished job's video or thumbnail for the player (any owner's)."""
    return content_response(get_any_job(session=session, job_id=job_id), variant, storage, settings.presign_expiry_s)


@router.get("/jobs/{job_id}/input_reference", response_model=None)
def job_input_reference(
    job_id: str, admin: AdminUser, session: SessionDep, settings: SettingsDep, storage: StorageDep
) -> Response:
    """The job's input image (image-to-video), as fitted to the job's size (any owner's)."""
    job = get_any_job(session=session, job_id=job_id)
    return input_reference_response(job, storage, settings.presign_expiry_s)


# ---- workers, dead letters, keys, audit ------------------------------------------------------------


@router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request, admin: AdminUser, session: SessionDep, state: StateDep) -> HTMLResponse:
    workers = state.workers.list()
    job_ids = [w.current_job for w in workers if w.current_job]
    jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(job_ids)))} if job_ids else {}
    return render(
        request,
        "admin/workers.html",
        admin,
        page="workers",
        workers=workers,
        jobs=jobs,
        timeout_s=state.settings.heartbeat_timeout_s,
    )


@router.get("/dead", response_class=HTMLResponse)
def dead_page(
    request: Request, admin: AdminUser, session: SessionDep, state: StateDep, cursor: str | None = None
) -> HTMLResponse:
    page = dead_letters(session=session, cursor=cursor, limit=PAGE_SIZE)
    return render(
        request,
        "admin/dead.html",
        admin,
        page="dead",
        jobs=page.jobs,
        next_cursor=page.next_cursor,
        max_attempts=state.settings.max_attempts,
    )


@router.post("/dead/requeue")
def requeue_dead(
    admin: AdminAction,
    session: SessionDep,
    state: StateDep,
    ids: Annotated[list[str], Form()] = [],  # noqa: B006
    scope: Annotated[Literal["selected", "all"], Form()] = "selected",
) -> RedirectResponse:
    """Failed → queued through the state machine, with a new outbox message for each job."""
    if scope == "selected" and not ids:
        return _back("/admin/dead", "Nothing selected.")
    where = JobFilter(status=[JobStatus.FAILED.value]) if scope == "all" else None
    result = retry_jobs(session=session, ids=ids if scope == "selected" else None, where=where)
    audit.record(
        session=session,
        actor=admin.key,
        action="dead.requeue",
        target=f"{scope}:{len(result.changed)} jobs",
        detail={"changed": result.changed, "skipped": result.skipped},
    )
    session.commit()
    return _back("/admin/dead", f"Requeued {len(result.changed)}.")


@router.get("/keys", response_class=HTMLResponse)
def keys_page(request: Request, admin: AdminUser, session: SessionDep) -> HTMLResponse:
    return render(request, "admin/keys.html", admin, page="keys", usage=stats.key_usage(session=session), created=None)


@router.post("/keys", response_class=HTMLResponse)
def create_key(
    request: Request,
    admin: AdminAction,
    session: SessionDep,
    name: Annotated[str, Form(min_length=1, max_length=200)],
    is_admin: Annotated[bool, Form()] = False,
) -> HTMLResponse:
    """Create a key and show it once, in this response only (only its hash is stored)."""
    created = api_keys.create_key(session=session, name=name.strip(), is_admin=is_admin)
    audit.record(
        session=session,
        actor=admin.key,
        action="key.create",
        target=f"key:{created.record.id}",
        detail={"name": created.record.name, "admin": is_admin},
    )
    session.commit()
    return render(
        request, "admin/keys.html", admin, page="keys", usage=stats.key_usage(session=session), created=created
    )


@router.post("/keys/{key_id}/revoke")
def revoke_key(key_id: int, admin: AdminAction, session: SessionDep) -> RedirectResponse:
    if key_id == admin.key.id:
        raise Conflict("you cannot revoke the key you are logged in with", code="own_key")
    record = api_keys.revoke_key(session=session, key_id=key_id)
    audit.record(
        session=session, actor=admin.key, action="key.revoke", target=f"key:{key_id}", detail={"name": record.name}
    )
    session.commit()
    return _back("/admin/keys", f"Revoked key {key_id}.")


@router.get("/loras", response_class=HTMLResponse)
def loras_page(request: Request, admin: AdminUser, session: SessionDep) -> HTMLResponse:
    """Every client's adapters with their use counts (the admin's view; clients see theirs via the API)."""
    return render(request, "admin/loras.html", admin, page="loras", loras=all_loras(session=session))


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, admin: AdminUser, session: SessionDep) -> HTMLResponse:
    return render(request, "admin/audit.html", admin, page="audit", entries=audit.recent(session=session, limit=200))
