"""The aiohttp application: the phone page, the login page and the signalling API.

Routes::

    GET  /                     the phone page (needs the token)
    GET  /login, POST /login   the login form; a right token sets the session cookie and
                               goes back to ?next= (/admin) or to /
    POST /logout               end the session (its cookie no longer works)
    GET  /api/config           ICE servers, session limit, model bundle version
    GET  /ready                public: 200 while this process takes new phones, 503
                               when its sessions are all in use (a load balancer's check)
    POST /api/webrtc/offer     {"sdp", "type": "offer"} -> {"sdp", "type": "answer"}
    GET  /static/...           the page's script, stylesheet and icon

Every error answer under /api/ is JSON ``{"error": <HTTP reason>, "reason": <what to
do>}``, aiohttp's own included (no such path, wrong method, body over 1 MiB), and so are
the login form's 400 and 413 (a body that is not a readable form, or over 1 MiB); every
answer, errors and 500s included, carries the security headers, and
``X-Facestream-Worker``: the pid of the process that answered (with ``serve
--workers`` the one that holds a session is the one that answered its offer). A JSON body of
any shape (not JSON, not UTF-8, nested a thousand deep, not an object) gets a 400.
State (the engine, the peers, the token checker) lives in application keys; the
peers are closed on shutdown. The engine belongs to the caller, who closes it after
the application is cleaned up.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiortc import RTCIceServer, RTCSessionDescription

from streamer.web.auth import Auth, after_sign_in, auth_middleware
from streamer.web.forwarded import forwarded_middleware, parse_trusted_proxies
from streamer.web.signalling import OfferError, parse_ice_servers
from streamer.web.webrtc import PeerManager

if TYPE_CHECKING:
    from facecore.config import Settings
    from streamer.live.engine import Engine

__all__ = [
    "AUTH",
    "BODY_ERRORS",
    "ENGINE",
    "ICE_SERVERS",
    "PEERS",
    "STATIC_DIR",
    "WORKER_HEADER",
    "bad_request",
    "body_error",
    "create_app",
    "error_response",
    "read_json_object",
]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
ENGINE: web.AppKey[Engine] = web.AppKey("engine")
PEERS: web.AppKey[PeerManager] = web.AppKey("peers")
AUTH: web.AppKey[Auth] = web.AppKey("auth")
ICE_SERVERS: web.AppKey[tuple[RTCIceServer, ...]] = web.AppKey("ice_servers")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self' blob: mediastream:; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=(self), microphone=()",
    "Cache-Control": "no-cache",
}
WORKER_HEADER = "X-Facestream-Worker"
LOGIN_ERROR_MARKER = 'id="login-error" hidden'
LOGIN_ERROR_TEXT = "That token is not right. Check it and try again."
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# What aiohttp's form and multipart parsers raise on a body a client can send: bad
# UTF-8 or no boundary (ValueError), an unknown charset (LookupError), a part's
# header that does not parse (HttpProcessingError).
BODY_ERRORS = (ValueError, LookupError, HttpProcessingError)


def create_app(
    settings: Settings,
    engine: Engine,
    token: str,
    *,
    secure: bool,
    stall_timeout: float = 5.0,
) -> web.Application:
    """The web application for ``engine``, guarded by ``token``. ``secure``: it is
    served over HTTPS (the session cookie is then marked ``Secure``). A peer that
    sends no video for ``stall_timeout`` seconds is released."""
    ice_servers = parse_ice_servers(
        settings.server.ice_servers, settings.origins.get("server.ice_servers")
    )
    trusted = parse_trusted_proxies(
        settings.server.trusted_proxies, settings.origins.get("server.trusted_proxies")
    )
    auth = Auth.for_settings(settings, token, secure=secure)
    app = web.Application(
        middlewares=[
            forwarded_middleware(trusted), _security_headers, _api_errors, auth_middleware(auth)
        ]
    )
    app[AUTH] = auth
    app[ENGINE] = engine
    app[ICE_SERVERS] = tuple(ice_servers)
    app[PEERS] = PeerManager(
        engine,
        max_sessions=settings.server.max_sessions,
        ice_servers=ice_servers,
        stall_timeout=stall_timeout,
    )
    app.router.add_get("/", _index)
    app.router.add_get("/login", _login_page)
    app.router.add_post("/login", _login)
    app.router.add_post("/logout", _logout)
    app.router.add_get("/favicon.ico", _favicon)
    app.router.add_get("/api/config", _config)
    app.router.add_get("/ready", _ready)
    app.router.add_post("/api/webrtc/offer", _offer)
    app.router.add_static("/static", STATIC_DIR, follow_symlinks=False)
    app.on_shutdown.append(_close_peers)
    return app


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        exc.headers[WORKER_HEADER] = str(os.getpid())
        raise
    except Exception:  # answered here, not by aiohttp, so that it gets the headers too
        log.exception("failure on %s %s", request.method, request.path)
        response = error_response(500, "the server failed on this request; its log says why")
    if not response.prepared:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        # which process answered (``serve --workers``; an offer's holds its session)
        response.headers[WORKER_HEADER] = str(os.getpid())
    return response


@web.middleware
async def _api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors under /api/ (no such path, wrong method, body too large)
    as the API's JSON errors; the pages keep aiohttp's."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        api = request.path.startswith("/api/")
        if not api or exc.status < 400 or exc.content_type == "application/json":
            raise  # pages, redirects, and errors already worded for the API
        headers = {k: exc.headers[k] for k in ("Allow", "Retry-After") if k in exc.headers}
        return error_response(exc.status, _api_error_reason(request, exc), headers)


def _api_error_reason(request: web.Request, exc: web.HTTPException) -> str:
    if isinstance(exc, web.HTTPNotFound):
        return f"there is no {request.path} in the API"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"{request.method} is not accepted on {request.path}; use {allowed}"
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return f"the body may be at most {request.client_max_size / 2**20:g} MiB"
    return exc.text or HTTPStatus(exc.status).phrase


def error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"error": HTTPStatus(status).phrase, "reason": reason}, status=status, headers=headers
    )


async def read_json_object(request: web.Request, shape: str) -> dict[str, object]:
    """The request's body as a JSON object, or ``HTTPBadRequest`` (JSON, naming
    ``shape``, e.g. ``{"name": string}``) whatever else the body is."""
    data = await request.read()  # over client_max_size: aiohttp's 413
    try:
        body = json.loads(data)
    except RecursionError:  # json's parser recurses once per nesting level
        raise _bad_json("the JSON is nested too deeply", shape) from None
    except UnicodeDecodeError:
        raise _bad_json("the body is not UTF-8 text", shape) from None
    except json.JSONDecodeError as exc:
        raise _bad_json(
            f"the body is not JSON ({exc.msg}, line {exc.lineno} column {exc.colno})", shape
        ) from None
    except ValueError:  # Python's 4300-digit limit on integers
        raise _bad_json("the JSON holds a number too long to read", shape) from None
    if not isinstance(body, dict):
        raise _bad_json(f"the JSON is {_json_kind(body)}, not an object", shape)
    return body


def body_error(exc: Exception) -> str:
    """What is wrong with a body, from one of `BODY_ERRORS`."""
    return exc.message if isinstance(exc, HttpProcessingError) else str(exc)


def _json_kind(value: object) -> str:
    kinds = ((list, "an array"), (str, "a string"), (bool, "a boolean"), ((int, float), "a number"))
    return next((name for kind, name in kinds if isinstance(value, kind)), "null")


def _bad_json(problem: str, shape: str) -> web.HTTPBadRequest:
    return bad_request(f"{problem}; send {shape}")


def bad_request(reason: str) -> web.HTTPBadRequest:
    """A 400 to raise, with the JSON error body."""
    return web.HTTPBadRequest(
        text=json.dumps({"error": "Bad Request", "reason": reason}),
        content_type="application/json",
    )


def _page(name: str, status: int = 200, text: str | None = None) -> web.Response:
    body = (STATIC_DIR / name).read_text(encoding="utf-8") if text is None else text
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


async def _index(request: web.Request) -> web.Response:
    return _page("index.html")


async def _login_page(request: web.Request) -> web.StreamResponse:
    if request.app[AUTH].signed_in(request):
        raise web.HTTPSeeOther(after_sign_in(request))
    return _page("login.html")


async def _login(request: web.Request) -> web.StreamResponse:
    auth = request.app[AUTH]
    if wait := auth.wait(request):  # before the body: a waiting guesser learns nothing
        message = f"Too many wrong tokens from this address: wait {wait} s and try again."
        return _login_error(429, message, {"Retry-After": str(wait)})
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge as exc:  # JSON, like the API's
        return error_response(413, _api_error_reason(request, exc))
    except BODY_ERRORS as exc:
        log.info("login form from %s refused: %s", request.remote, body_error(exc))
        return error_response(400, f"the form cannot be read ({body_error(exc)}); "
                              "send token=... as a form in UTF-8")
    candidate = form.get("token")
    if auth.check_token(request, candidate.strip() if isinstance(candidate, str) else "", "login"):
        response = web.HTTPSeeOther(after_sign_in(request))
        auth.sign_in(request, response)
        raise response
    return _login_error(401, LOGIN_ERROR_TEXT)


def _login_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The login page again, saying ``message``."""
    text = (STATIC_DIR / "login.html").read_text(encoding="utf-8")
    shown = text.replace(LOGIN_ERROR_MARKER, 'id="login-error"').replace(LOGIN_ERROR_TEXT, message)
    response = _page("login.html", status=status, text=shown)
    response.headers.update(headers or {})
    return response


async def _logout(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther("/login")
    request.app[AUTH].sign_out(request, response)
    raise response


async def _favicon(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/static/icon.svg")


async def _config(request: web.Request) -> web.Response:
    peers = request.app[PEERS]
    ice = [
        {
            "urls": s.urls,
            **({"username": s.username, "credential": s.credential} if s.username else {}),
        }
        for s in request.app[ICE_SERVERS]
    ]
    return web.json_response(
        {
            "ice_servers": ice,
            "sessions": len(peers),
            "max_sessions": peers.max_sessions,
            "bundle_version": request.app[ENGINE].bundle_version,
        }
    )


async def _ready(request: web.Request) -> web.Response:
    peers = request.app[PEERS]
    if len(peers) >= peers.max_sessions:
        return error_response(503, f"all {peers.max_sessions} sessions are in use")
    return web.json_response({"ready": True})


async def _offer(request: web.Request) -> web.Response:
    shape = 'a JSON object {"sdp": string, "type": "offer"}'
    body = await read_json_object(request, shape)
    sdp, kind = body.get("sdp"), body.get("type")
    if not (isinstance(sdp, str) and isinstance(kind, str)):
        return error_response(400, f"expected {shape}")
    try:
        offer = RTCSessionDescription(sdp=sdp, type=kind)
    except ValueError:
        return error_response(400, f'expected "type": "offer", got {kind!r}')
    try:
        answer = await request.app[PEERS].answer(offer)
    except OfferError as exc:
        headers = {"Retry-After": "5"} if exc.status == 503 else None
        log.info("offer from %s refused (%d): %s", request.remote, exc.status, exc.reason)
        return error_response(exc.status, exc.reason, headers)
    return web.json_response({"sdp": answer.sdp, "type": answer.type})


async def _close_peers(app: web.Application) -> None:
    await app[PEERS].close()
