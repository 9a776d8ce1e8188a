"""Access control for the web server: one shared token, and sessions made with it.

The token comes from ``settings.server.token`` (``--token`` or ``FACESTREAM_TOKEN``)
or, when that is unset, from ``state_dir/server/token``: made with ``secrets`` on
first run and stored readable by its owner only (0600). Rotating it (deleting that
file, or setting another token, then restarting) revokes every session.

A request is let in when it carries the token as ``Authorization: Bearer TOKEN``
(automation) or the session cookie the login page sets (browsers). The cookie holds
a random session id that the server keeps (as a SHA-256, with its expiry, in
``state_dir/server/sessions.json``, 0600, so a restart keeps browsers signed in);
signing out deletes it, so a copied cookie stops working too. The cookie is
``HttpOnly`` and ``SameSite=Strict``, and ``Secure`` when the browser speaks HTTPS
(to this server, or to a trusted load balancer: ``streamer/web/forwarded.py``).
Without either, API paths answer 401 and pages redirect to the login page, which
(with its stylesheet, script and icon, and ``/ready``) is all an outsider can load.

Wrong tokens (at the login form or as a bearer token) are counted per client
address (IPv6 by /64; behind a trusted load balancer, the address it forwards):
after ``FREE_TRIES`` the client waits 1 s, then twice as long after each further
wrong token, up to 5 min, and meanwhile gets 429 with
``Retry-After`` for anything that presents a token, right or wrong. A signed-in
browser at that address is not affected. The counts live in this process only:
with ``serve --workers N`` each worker counts its own, so a guesser spread over
them gets up to N times the free tries (the waits still double in each).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from enrollment.files import write_private_file
from facecore.config import Settings, ensure_private_dir
from facecore.errors import ConfigError

__all__ = [
    "COOKIE_NAME",
    "PUBLIC_PATHS",
    "Auth",
    "FailureLimiter",
    "Sessions",
    "after_sign_in",
    "auth_middleware",
    "client_key",
    "load_or_create_token",
    "sessions_path",
    "token_path",
]

log = logging.getLogger(__name__)

COOKIE_NAME = "facestream_session"
TOKEN_FILE = "token"
SESSIONS_FILE = "sessions.json"
SESSION_LIFETIME_S = 30 * 24 * 3600
MAX_SESSIONS = 1000  # signed-in browsers kept; past it the oldest is signed out
FREE_TRIES = 5  # wrong tokens a client may send before it has to wait
FIRST_WAIT_S = 1.0  # doubled after each further wrong token
MAX_WAIT_S = 300.0
FORGET_AFTER_S = 3600.0  # a client with no wrong token for this long starts afresh
MAX_CLIENTS = 10_000  # clients whose wrong tokens are counted; the oldest go first
MIN_TOKEN_LENGTH = 16
# Served without the token: the login page and what it loads, and the load balancer's
# readiness check.
PUBLIC_PATHS = frozenset(
    {"/login", "/static/style.css", "/static/login.js", "/static/icon.svg", "/favicon.ico",
     "/ready"}
)
# Pages a sign-in goes back to (``/login?next=/admin``); any other goes to the camera
# page, "/": a list, so that ``next`` can never send a browser to another site.
RETURN_PAGES = frozenset({"/admin"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def after_sign_in(request: web.Request) -> str:
    """Where the login form sends the browser: its ``next`` page, when it is one of
    `RETURN_PAGES`, else the camera page."""
    page = request.query.get("next", "")
    return page if page in RETURN_PAGES else "/"


def token_path(settings: Settings) -> Path:
    return settings.state_dir / "server" / TOKEN_FILE


def sessions_path(settings: Settings) -> Path:
    return settings.state_dir / "server" / SESSIONS_FILE


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


def client_key(remote: str | None) -> str:
    """Whose wrong tokens ``remote`` (the peer address) counts as: the address, or its
    /64 for IPv6, since one host usually holds a whole /64."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return remote or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    blocked_until: float = 0.0


@dataclass
class FailureLimiter:
    """Wrong tokens per client, and how long each must wait before it tries again."""

    clock: Callable[[], float] = time.monotonic
    _clients: dict[str, _Failures] = field(default_factory=dict)

    def wait(self, client: str) -> float:
        """Seconds before ``client`` may present a token again (0: now)."""
        failures = self._clients.get(client)
        return 0.0 if failures is None else max(failures.blocked_until - self.clock(), 0.0)

    def failed(self, client: str) -> int:
        """Count a wrong token from ``client``; how many it has sent."""
        now = self.clock()
        failures = self._clients.pop(client, None)
        if failures is None or now - failures.last > FORGET_AFTER_S:
            failures = _Failures()
        failures.count += 1
        failures.last = now
        if failures.count > FREE_TRIES:
            wait = FIRST_WAIT_S * 2.0 ** min(failures.count - FREE_TRIES - 1, 30)
            failures.blocked_until = now + min(wait, MAX_WAIT_S)
        self._clients[client] = failures  # last in the dict: the most recent
        while len(self._clients) > MAX_CLIENTS:
            del self._clients[next(iter(self._clients))]
        return failures.count

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)


@dataclass
class Sessions:
    """Signed-in browsers: random ids, kept as SHA-256 digests with their expiry
    (wall-clock seconds) in ``path``, which also names the token they were made with:
    sessions of another token are dropped when loaded.

    The file is the truth, shared by every server process (``serve --workers``): a
    change is made under an exclusive ``flock`` on ``path``'s lock file, on what the
    file holds then, and written back whole (renamed over it); a lookup first reloads
    the file if it was replaced since it was last read (one ``stat``), so a session
    opened or ended by one worker is known to the others at their next request."""

    path: Path
    token: str
    clock: Callable[[], float] = time.time
    _expiry: dict[str, float] = field(default_factory=dict)
    _seen: tuple[int, int, int] | None = None  # the file's (inode, mtime, size) when read

    def __post_init__(self) -> None:
        with self._locked():
            if self._reload() == "another token":  # its sessions are gone for good
                log.info("the access token changed: every session is signed out")
                self._save()

    def open(self) -> str:
        """A new session; its id (the cookie's value)."""
        session_id = secrets.token_urlsafe(32)
        with self._locked():
            self._reload()
            self._expiry[_digest(session_id)] = self.clock() + SESSION_LIFETIME_S
            while len(self._expiry) > MAX_SESSIONS:
                del self._expiry[next(iter(self._expiry))]
            self._save()
        return session_id

    def valid(self, session_id: str) -> bool:
        self._reload()
        return self._expiry.get(_digest(session_id), 0.0) > self.clock()

    def revoke(self, session_id: str) -> None:
        with self._locked():
            self._reload()
            if self._expiry.pop(_digest(session_id), None) is not None:
                self._save()

    def _token_digest(self) -> str:
        return hmac.new(self.token.encode(), b"facestream sessions", hashlib.sha256).hexdigest()

    def _reload(self) -> str:
        """Read the file again if it changed since the last read: "same", "read",
        "another token" (its sessions not taken), "none" or "unreadable"."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._expiry, self._seen = {}, None
            return "none"
        except OSError:
            info = None
        seen = None if info is None else (info.st_ino, info.st_mtime_ns, info.st_size)
        if seen is not None and seen == self._seen:
            return "same"
        self._seen = seen
        now = self.clock()
        try:
            stored = json.loads(self.path.read_text(encoding="utf-8"))
            if stored["token"] != self._token_digest():
                self._expiry = {}
                return "another token"
            sessions = {str(k): float(v) for k, v in stored["sessions"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("cannot read the sessions in %s (%s); everyone signs in again",
                        self.path, exc)
            self._expiry = {}
            return "unreadable"
        self._expiry = {k: v for k, v in sessions.items() if v > now}
        return "read"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the lock file beside ``path`` (made 0600); without it (an unwritable
        state directory) go on unlocked: the save then fails and says so."""
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            ensure_private_dir(lock.parent)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            log.error("cannot lock the sessions in %s: %s", lock, exc.strerror)
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _save(self) -> None:
        data = {"token": self._token_digest(), "sessions": self._expiry}
        try:
            write_private_file(self.path, json.dumps(data).encode())
            info = self.path.stat()
            self._seen = (info.st_ino, info.st_mtime_ns, info.st_size)
        except OSError as exc:  # the session still works in this process until it restarts
            log.error("cannot store the sessions in %s: %s", self.path, exc.strerror)


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass
class Auth:
    """Checks requests against ``token`` and the ``sessions`` made with it;
    ``secure`` marks the cookie ``Secure``."""

    token: str
    secure: bool
    sessions: Sessions
    limiter: FailureLimiter = field(default_factory=FailureLimiter)

    @classmethod
    def for_settings(cls, settings: Settings, token: str, *, secure: bool) -> Auth:
        return cls(token, secure, Sessions(sessions_path(settings), token))

    def token_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self.token.encode())

    def signed_in(self, request: web.Request) -> bool:
        """Whether ``request`` carries the cookie of a live session."""
        return self.sessions.valid(request.cookies.get(COOKIE_NAME, ""))

    def check_token(self, request: web.Request, candidate: str, where: str) -> bool:
        """Whether ``candidate`` (sent at ``where``: the login form, a bearer token) is
        the token; counts a wrong one against the client. The caller has checked
        that the client need not wait (`wait`)."""
        client = client_key(request.remote)
        if self.token_matches(candidate):
            self.limiter.succeeded(client)
            return True
        count = self.limiter.failed(client)
        wait = self.limiter.wait(client)
        log.warning("wrong token (%s) from %s: %d in a row%s", where, request.remote, count,
                    f", next try allowed in {wait:.0f} s" if wait else "")
        return False

    def wait(self, request: web.Request) -> int:
        """Whole seconds the client of ``request`` must wait to present a token (0: none)."""
        return math.ceil(self.limiter.wait(client_key(request.remote)))

    def sign_in(self, request: web.Request, response: web.StreamResponse) -> None:
        """Open a session for ``request``'s browser: its cookie, on ``response``. The
        cookie is ``Secure`` when the browser spoke HTTPS, to this server or to the
        load balancer in front of it (``X-Forwarded-Proto``, from a trusted proxy)."""
        response.set_cookie(
            COOKIE_NAME,
            self.sessions.open(),
            path="/",
            httponly=True,
            secure=self.secure or request.secure,
            samesite="Strict",
            max_age=SESSION_LIFETIME_S,
        )

    def sign_out(self, request: web.Request, response: web.StreamResponse) -> None:
        self.sessions.revoke(request.cookies.get(COOKIE_NAME, ""))
        response.del_cookie(COOKIE_NAME, path="/")


def auth_middleware(auth: Auth) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Let through public paths and authorised requests; answer the rest with
    401 (API) or a redirect to the login page, and a client that sent too many
    wrong tokens with 429."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS or auth.signed_in(request):
            return await handler(request)
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            if wait := auth.wait(request):
                return web.json_response(
                    {
                        "error": "Too Many Requests",
                        "reason": f"too many wrong tokens from your address; try again in {wait} s",
                    },
                    status=429,
                    headers={"Retry-After": str(wait)},
                )
            if auth.check_token(request, credential.strip(), "bearer"):
                return await handler(request)
        if request.path.startswith("/api/"):
            return web.json_response(
                {"error": "Unauthorized", "reason": "send Authorization: Bearer TOKEN or log in"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="facestream"'},
            )
        returning = request.method == "GET" and request.path in RETURN_PAGES
        raise web.HTTPSeeOther(f"/login?next={request.path}" if returning else "/login")

    return middleware
