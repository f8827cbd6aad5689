"""Request dependencies as typed aliases: the DB session, the settings, storage and the caller's key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

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


def get_state(request: Request) -> AppState:
    return request.app.state.vidq  # type: ignore[no-any-return]


StateDep = Annotated[AppState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    """The request's session. It never commits: a route that writes commits before it answers
    (FastAPI runs this teardown after the response is sent, so a commit here would let a client read
    an answer before its change exists); whatever is left uncommitted is rolled back."""
    session = state.session_factory()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


def get_settings_dep(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_storage(state: StateDep) -> Storage:
    return state.storage


StorageDep = Annotated[Storage, Depends(get_storage)]


def get_current_key(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> ApiKey:
    if credentials is None:
        raise Unauthenticated("send your API key as 'Authorization: Bearer <key>'", code="missing_api_key")
    return authenticate(session=session, plaintext=credentials.credentials)


CurrentKey = Annotated[ApiKey, Depends(get_current_key)]


def get_call_session(state: StateDep) -> Iterator[Session]:
    """A session closed when the route function returns, not when the response ends: for streams
    that stay open for minutes and must not hold a pooled connection all that time."""
    yield from get_session(state)


CallSessionDep = Annotated[Session, Depends(get_call_session, scope="function")]


def get_call_key(
    session: CallSessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> ApiKey:
    return get_current_key(session, credentials)


CallKey = Annotated[ApiKey, Depends(get_call_key, scope="function")]


def get_admin_key(key: CurrentKey) -> ApiKey:
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
