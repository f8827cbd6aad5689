"""Request dependencies as typed aliases: the DB session, the settings, storage and the caller's key.

The ones that do no I/O are ``async``: FastAPI runs a plain ``def`` dependency on a worker thread,
and each such hop costs more than the dependency itself. The route functions (which query the
database) stay on threads; a key found in the key cache needs none either.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, ParamSpec, TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.admin_auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
    AdminSession,
    admin_from_bearer,
    admin_from_cookie,
    check_csrf,
)
from api.state import AppState
from jobs.db import session_scope
from jobs.errors import Forbidden, Unauthenticated
from jobs.keys import authenticate
from jobs.models import ApiKey
from jobs.settings import Settings
from jobs.storage import Storage

_bearer = HTTPBearer(auto_error=False, description="An API key created with `vidq keys create`.")


async def get_state(request: Request) -> AppState:
    return request.app.state.vidq  # type: ignore[no-any-return]


StateDep = Annotated[AppState, Depends(get_state)]


async def get_session(state: StateDep) -> AsyncIterator[Session]:
    """The request's session. It never commits: a route that writes commits before it answers
    (FastAPI runs this teardown after the response is sent, so a commit here would let a client read
    an answer before its change exists); whatever is left uncommitted is rolled back.

    Creating a session does no I/O (it connects on first use); the teardown talks to the database
    only if a transaction is still open (a read), and then does so on a worker thread."""
    session = state.session_factory()
    try:
        yield session
    finally:
        await _end(session, state)


async def _end(session: Session, state: AppState) -> None:
    """End the request's session. A read leaves its transaction open: it is rolled back on one of the
    teardown threads (``AppState.teardown_threads``), so the connection goes back to the pool without
    waiting behind the requests queued for a route thread (which may be waiting for that connection)."""
    if session.in_transaction():
        await anyio.to_thread.run_sync(_roll_back_and_close, session, limiter=state.teardown_threads)
    else:
        session.close()  # committed: no transaction, no connection, no I/O


def _roll_back_and_close(session: Session) -> None:
    session.rollback()
    session.close()


SessionDep = Annotated[Session, Depends(get_session)]


async def get_settings_dep(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


async def get_storage(state: StateDep) -> Storage:
    return state.storage


StorageDep = Annotated[Storage, Depends(get_storage)]


async def get_current_key(
    session: SessionDep, state: StateDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> ApiKey:
    return await _key_of(session, state, credentials)


async def _key_of(session: Session, state: AppState, credentials: HTTPAuthorizationCredentials | None) -> ApiKey:
    if credentials is None:
        raise Unauthenticated("send your API key as 'Authorization: Bearer <key>'", code="missing_api_key")
    cached = state.key_cache.known(credentials.credentials, session=session)  # no I/O
    if cached is not None:
        return cached
    return await run_in_threadpool(_authenticate, session, state, credentials.credentials)


def _authenticate(session: Session, state: AppState, plaintext: str) -> ApiKey:
    """The key looked up, its read transaction ended: the request may now wait for a route thread,
    and must not hold a pooled connection meanwhile (the running routes may be waiting for one)."""
    key = authenticate(session=session, plaintext=plaintext, cache=state.key_cache)
    session.commit()  # nothing was written; the key's attributes stay loaded (expire_on_commit=False)
    return key


CurrentKey = Annotated[ApiKey, Depends(get_current_key)]


@dataclass(frozen=True, slots=True)
class Caller:
    """The caller's key with the request's session and the app's state, as one dependency.

    The busiest routes (``/v1/videos``) take this instead of four: FastAPI's dependency solving costs
    tens of microseconds a node, on the event loop, and a submit at full load spent about a sixth of
    its API process's CPU there (py-spy), mostly in the machinery, not in the dependencies."""

    key: ApiKey
    session: Session
    state: AppState

    @property
    def settings(self) -> Settings:
        return self.state.settings


async def get_caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> AsyncIterator[Caller]:
    """As ``SessionDep`` + ``CurrentKey`` + ``StateDep``: the same session life (never commits; what
    is left open is rolled back) and the same key lookup (cache, else the database on a thread)."""
    state: AppState = request.app.state.vidq
    session = state.session_factory()
    try:
        yield Caller(key=await _key_of(session, state, credentials), session=session, state=state)
    finally:
        await _end(session, state)


CallerDep = Annotated[Caller, Depends(get_caller)]


async def get_call_session(state: StateDep) -> AsyncIterator[Session]:
    """A session closed when the route function returns, not when the response ends: for streams
    that stay open for minutes and must not hold a pooled connection all that time."""
    session = state.session_factory()
    try:
        yield session
    finally:
        await _end(session, state)


CallSessionDep = Annotated[Session, Depends(get_call_session, scope="function")]


async def get_call_key(
    session: CallSessionDep,
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    return await get_current_key(session, state, credentials)


CallKey = Annotated[ApiKey, Depends(get_call_key, scope="function")]


async def get_admin_key(key: CurrentKey) -> ApiKey:
    if not key.is_admin:
        raise Forbidden("this needs an admin key")
    return key


AdminKey = Annotated[ApiKey, Depends(get_admin_key)]


def get_admin_session(
    request: Request, state: StateDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> AdminSession:
    """The admin behind a dashboard request: a Bearer admin key, or the login cookie. A short session
    of its own, so a long event stream does not hold a pooled connection."""
    with session_scope(state.session_factory) as session:
        if credentials is not None:
            return admin_from_bearer(session=session, token=credentials.credentials)
        return admin_from_cookie(session=session, settings=state.settings, cookie=request.cookies.get(SESSION_COOKIE))


AdminUser = Annotated[AdminSession, Depends(get_admin_session)]


async def get_admin_action(request: Request, admin: AdminUser) -> AdminSession:
    """An admin allowed to change something: cookie sessions must send the session's CSRF token
    (the form field ``csrf_token`` or the ``X-CSRF-Token`` header)."""
    submitted = request.headers.get(CSRF_HEADER)
    if submitted is None and admin.via == "cookie":
        form = await request.form()  # Starlette caches it: the route's Form fields still read it
        value = form.get(CSRF_FIELD)
        submitted = value if isinstance(value, str) else None
    check_csrf(admin, submitted)
    return admin


AdminAction = Annotated[AdminSession, Depends(get_admin_action)]


P = ParamSpec("P")
T = TypeVar("T")


def in_thread(route: Callable[P, T]) -> Callable[P, T]:
    """Run a sync route function on a route thread and end its session's transaction in that same
    thread, before the answer is built.

    FastAPI validates the return value of a plain ``def`` route on a second trip to a route thread,
    while the request still holds its connection: with every route thread waiting for a connection
    and every connection held by a request waiting for a thread, nothing moves until the pool times
    out. A route wrapped here returns to the event loop with its connection back in the pool and its
    answer validated there (one thread trip instead of two). What the route loaded stays readable
    (closing detaches, it does not expire); a write route commits before it returns, as always.
    """

    @functools.wraps(route)
    async def endpoint(*args: P.args, **kwargs: P.kwargs) -> T:
        return await run_in_threadpool(_run_and_close_sessions, route, *args, **kwargs)

    # The route's parameters with their annotations evaluated in the route's own module: FastAPI
    # 0.121 (our lowest supported release) resolves string annotations (`from __future__ import
    # annotations`) in the wrapper's module, where the route's dependency aliases do not exist.
    endpoint.__signature__ = inspect.signature(route, eval_str=True)  # type: ignore[attr-defined]
    return endpoint  # type: ignore[return-value]


def _run_and_close_sessions(route: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    try:
        return route(*args, **kwargs)
    finally:
        for value in kwargs.values():
            session = value.session if isinstance(value, Caller) else value
            if isinstance(session, Session):
                session.close()  # the connection back to the pool (its reset rolls back a read)
