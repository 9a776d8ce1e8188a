"""Access control for the web server: one shared token.

The token comes from ``settings.server.token`` (``--token`` or ``FACESTREAM_TOKEN``)
or, when that is unset, from ``state_dir/server/token``: made with ``secrets`` on
first run and stored readable by its owner only (0600).

A request is let in when it carries the token as ``Authorization: Bearer TOKEN``
(automation) or the session cookie the login page sets (browsers). The cookie
holds an HMAC of the token, not the token itself, is ``HttpOnly`` and
``SameSite=Strict``, and ``Secure`` when the server speaks HTTPS. Without either,
API paths answer 401 and pages redirect to the login page, which (with its
stylesheet, script and icon) is all an outsider can load.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from facecore.config import Settings, ensure_private_dir
from facecore.errors import ConfigError

__all__ = [
    "COOKIE_NAME",
    "PUBLIC_PATHS",
    "Auth",
    "auth_middleware",
    "load_or_create_token",
    "token_path",
]

log = logging.getLogger(__name__)

COOKIE_NAME = "facestream_session"
TOKEN_FILE = "token"
MIN_TOKEN_LENGTH = 16
# Served without the token: the login page and what it loads.
PUBLIC_PATHS = frozenset(
    {"/login", "/static/style.css", "/static/login.js", "/static/icon.svg", "/favicon.ico"}
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def token_path(settings: Settings) -> Path:
    return settings.state_dir / "server" / TOKEN_FILE


def load_or_create_token(settings: Settings) -> tuple[str, bool]:
    """The access token and whether it was just made (so the caller prints it).

    A token given in the settings wins and is never written to disk.
    """
    given = settings.server.token
    if given is not None:
        if len(given) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"a token needs at least {MIN_TOKEN_LENGTH} characters",
                key="server.token",
                value="(hidden)",
                origin=settings.origins.get("server.token"),
            )
        return given, False
    path = token_path(settings)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    except OSError as exc:
        raise ConfigError(f"cannot read the access token file {path}: {exc.strerror}") from exc
    if token:
        return token, False
    token = secrets.token_urlsafe(24)
    try:
        ensure_private_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot store the access token in {path}: {exc.strerror}") from exc
    log.info("made a new access token in %s", path)
    return token, True


@dataclass(frozen=True)
class Auth:
    """Checks requests against ``token``; ``secure`` marks the cookie ``Secure``."""

    token: str
    secure: bool

    @property
    def cookie_value(self) -> str:
        return hmac.new(self.token.encode(), b"facestream session", hashlib.sha256).hexdigest()

    def token_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self.token.encode())

    def allows(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(credential.strip()):
            return True
        cookie = request.cookies.get(COOKIE_NAME, "")
        return hmac.compare_digest(cookie.encode(), self.cookie_value.encode())

    def set_cookie(self, response: web.StreamResponse) -> None:
        response.set_cookie(
            COOKIE_NAME,
            self.cookie_value,
            path="/",
            httponly=True,
            secure=self.secure,
            samesite="Strict",
            max_age=30 * 24 * 3600,
        )

    @staticmethod
    def clear_cookie(response: web.StreamResponse) -> None:
        response.del_cookie(COOKIE_NAME, path="/")


def auth_middleware(auth: Auth) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Let through public paths and authorised requests; answer the rest with
    401 (API) or a redirect to the login page."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS or auth.allows(request):
            return await handler(request)
        if request.path.startswith("/api/"):
            return web.json_response(
                {"error": "Unauthorized", "reason": "send Authorization: Bearer TOKEN or log in"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="facestream"'},
            )
        raise web.HTTPSeeOther("/login")

    return middleware
