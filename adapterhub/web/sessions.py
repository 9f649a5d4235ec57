"""Who may change things from the pages: sign-in with the server's API key, session cookies, CSRF and playground tokens.

``/ui/login`` compares the key given once with ``--api-key`` and opens a session: a random id kept here (never
the key itself) and sent back as a cookie that scripts cannot read (``HttpOnly``), that another site's page
cannot make the browser send (``SameSite=Strict``), and that only ``/ui`` sees (``Path=/ui``). Each session has
its own CSRF token, which every form that changes something carries as the hidden field ``csrf``; a POST whose
token does not match its session's is refused. The playground's script gets a short-lived token of its own
(``playground_token``) that the API accepts as a bearer key until it expires, so the key never reaches a page.
Without ``--api-key`` no one can sign in and the pages are read-only.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from fastapi import Request, Response

from adapterhub.web.render import PageError

COOKIE = "adapterhub_ui"
SESSION_SECONDS = 12 * 3600
TOKEN_SECONDS = 15 * 60
READ_ONLY = "this UI is read-only: no --api-key was configured. Start `adapterhub ui` or `adapterhub serve` with --api-key KEY to sign in and make changes"  # fmt: skip


@dataclass(frozen=True)
class Session:
    id: str
    csrf: str
    expires: float


class Sessions:
    """The open sessions and playground tokens of one server, in memory (a restart signs everyone out)."""

    def __init__(self, api_key: str | None) -> None:
        self._key = api_key
        self._sessions: dict[str, Session] = {}
        self._tokens: dict[str, float] = {}  # playground token -> expiry
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return self._key is not None

    def login(self, key: str) -> Session:
        if self._key is None:
            raise PageError(403, READ_ONLY)
        if not hmac.compare_digest(key.encode(), self._key.encode()):
            raise PageError(403, "the key is not valid: give the --api-key the server was started with")
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), time.time() + SESSION_SECONDS)
        with self._lock:
            self._drop_expired()
            self._sessions[session.id] = session
        return session

    def current(self, request: Request) -> Session | None:
        session_id = request.cookies.get(COOKIE)
        if session_id is None:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
        return session if session is not None and session.expires > time.time() else None

    def require(self, request: Request, csrf: str | None) -> Session:
        """The request's session, if it may change something with this form's ``csrf``; else a 403 saying why."""
        if self._key is None:
            raise PageError(403, READ_ONLY)
        session = self.current(request)
        if session is None:
            raise PageError(403, "sign in first (/ui/login, with the server's API key): changes need a session")
        if not csrf or not hmac.compare_digest(csrf.encode(), session.csrf.encode()):
            raise PageError(403, "the form's CSRF token does not match your session; reload the page and try again")
        return session

    def logout(self, session: Session) -> None:
        with self._lock:
            self._sessions.pop(session.id, None)

    def set_cookie(self, response: Response, session: Session) -> None:
        response.set_cookie(COOKIE, session.id, max_age=SESSION_SECONDS, path="/ui", httponly=True, samesite="strict")

    def clear_cookie(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")

    def playground_token(self) -> str:
        """A bearer token for the API, valid ``TOKEN_SECONDS`` (minted for a signed-in page only)."""
        token = "ui-" + secrets.token_urlsafe(32)
        with self._lock:
            self._drop_expired()
            self._tokens[token] = time.time() + TOKEN_SECONDS
        return token

    def accepts_bearer(self, authorization: bytes) -> bool:
        """Whether ``Authorization: Bearer <token>`` names a playground token that has not expired."""
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        if scheme != "Bearer" or not token:
            return False
        with self._lock:
            expires = self._tokens.get(token)
        return expires is not None and expires > time.time()

    def _drop_expired(self) -> None:
        now = time.time()
        self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
        self._tokens = {k: t for k, t in self._tokens.items() if t > now}
