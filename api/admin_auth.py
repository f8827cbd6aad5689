"""Who may use the admin side, and proof that an action came from the admin's own page.

Two ways in, both for admin keys only (a client key gets 403):

- ``Authorization: Bearer <admin key>``, for tools. No cookie is involved, so no CSRF token either:
  a browser never attaches that header on its own.
- The login form, which checks the key once and sets a session cookie: signed with
  ``VIDQ_SECRET_KEY`` (itsdangerous, with an expiry), HttpOnly, SameSite=Strict, Secure over HTTPS.
  It carries the key's id and a random session nonce, never the key. Every POST made with the
  cookie must carry a CSRF token, an HMAC of the nonce, so it is bound to that session.

The key is looked up on every request, so revoking it (or dropping its admin flag) ends its sessions;
logging out records the session's nonce as revoked, so that cookie stops working on the server too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete
from sqlalchemy.orm import Session

from jobs.db import utcnow
from jobs.errors import DomainError, Forbidden
from jobs.keys import authenticate
from jobs.models import ApiKey, RevokedSession
from jobs.settings import Settings

SESSION_COOKIE = "vidq_admin"
LOGIN_CSRF_COOKIE = "vidq_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


class LoginRequired(DomainError):
    """No valid admin session: pages answer with a redirect to the login form."""

    code = "login_required"


class CsrfRefused(Forbidden):
    code = "csrf_failed"


@dataclass(frozen=True)
class AdminSession:
    key: ApiKey
    via: Literal["bearer", "cookie"]
    csrf_token: str  # "" for bearer requests, which need none

    @property
    def name(self) -> str:
        return self.key.name


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.secret_key.get_secret_value(), salt="vidq.admin.session")


def csrf_token_for(settings: Settings, nonce: str) -> str:
    secret = settings.secret_key.get_secret_value().encode()
    return hmac.new(secret, f"csrf:{nonce}".encode(), hashlib.sha256).hexdigest()


def new_session_cookie(settings: Settings, key: ApiKey) -> str:
    return _serializer(settings).dumps({"k": key.id, "n": secrets.token_urlsafe(16)})


def read_session_cookie(settings: Settings, value: str) -> tuple[int, str] | None:
    """(key id, nonce) from a cookie this server signed and that has not expired, else None."""
    try:
        data = _serializer(settings).loads(value, max_age=settings.admin_session_ttl_s)
        return int(data["k"]), str(data["n"])
    except (BadSignature, KeyError, TypeError, ValueError):
        return None


def admin_from_bearer(*, session: Session, token: str) -> AdminSession:
    key = authenticate(session=session, plaintext=token)
    if not key.is_admin:
        raise Forbidden("this needs an admin key")
    return AdminSession(key=key, via="bearer", csrf_token="")


def admin_from_cookie(*, session: Session, settings: Settings, cookie: str | None) -> AdminSession:
    parsed = read_session_cookie(settings, cookie) if cookie else None
    if parsed is None:
        raise LoginRequired("log in with an admin key")
    key_id, nonce = parsed
    if session.get(RevokedSession, nonce) is not None:
        raise LoginRequired("you logged out of this session; log in again")
    key = session.get(ApiKey, key_id)
    if key is None or key.revoked_at is not None or not key.is_admin:
        raise LoginRequired("this session's key was revoked; log in again")
    return AdminSession(key=key, via="cookie", csrf_token=csrf_token_for(settings, nonce))


def revoke_session(*, session: Session, settings: Settings, cookie: str | None) -> None:
    """End a cookie session on the server (logout): its nonce is refused from now on, even if the
    cookie was copied. Rows whose cookies have expired anyway are dropped on the way."""
    parsed = read_session_cookie(settings, cookie) if cookie else None
    now = utcnow()
    session.execute(delete(RevokedSession).where(RevokedSession.expires_at < now))
    if parsed is not None and session.get(RevokedSession, parsed[1]) is None:
        session.add(RevokedSession(nonce=parsed[1], expires_at=now + timedelta(seconds=settings.admin_session_ttl_s)))


def check_csrf(admin: AdminSession, submitted: str | None) -> None:
    """Refuse a cookie-authenticated action whose token is missing or belongs to another session."""
    if admin.via == "bearer":
        return
    if not submitted or not hmac.compare_digest(submitted, admin.csrf_token):
        raise CsrfRefused("the form's CSRF token is missing or does not match your session; reload the page")


def safe_next(target: str | None) -> str:
    """Only a path on the admin side: never another host (``//evil``) after login."""
    if target and target.startswith("/admin") and not target.startswith("//") and "\\" not in target:
        return target
    return "/admin"
