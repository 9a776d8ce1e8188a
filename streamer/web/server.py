"""The aiohttp application: the phone page, the login page and the signalling API.

Routes::

    GET  /                     the phone page (needs the token)
    GET  /login, POST /login   the login form; a right token sets the session cookie
    POST /logout               forget the cookie
    GET  /api/config           ICE servers, session limit, model bundle version
    POST /api/webrtc/offer     {"sdp", "type": "offer"} -> {"sdp", "type": "answer"}
    GET  /static/...           the page's script, stylesheet and icon

Every error answer is JSON ``{"error": <HTTP reason>, "reason": <what to do>}``.
State (the engine, the peers, the token checker) lives in application keys; the
peers are closed on shutdown. The engine belongs to the caller, who closes it after
the application is cleaned up.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from aiortc import RTCIceServer, RTCSessionDescription

from streamer.web.auth import Auth, auth_middleware
from streamer.web.signalling import OfferError, parse_ice_servers
from streamer.web.webrtc import PeerManager

if TYPE_CHECKING:
    from facecore.config import Settings
    from streamer.live.engine import Engine

__all__ = ["AUTH", "ENGINE", "ICE_SERVERS", "PEERS", "STATIC_DIR", "create_app"]

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
LOGIN_ERROR_MARKER = 'id="login-error" hidden'
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    auth = Auth(token, secure=secure)
    app = web.Application(middlewares=[_security_headers, auth_middleware(auth)])
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
        raise
    if not response.prepared:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
    return response


def error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"error": HTTPStatus(status).phrase, "reason": reason}, status=status, headers=headers
    )


def _page(name: str, status: int = 200, text: str | None = None) -> web.Response:
    body = (STATIC_DIR / name).read_text(encoding="utf-8") if text is None else text
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


async def _index(request: web.Request) -> web.Response:
    return _page("index.html")


async def _login_page(request: web.Request) -> web.StreamResponse:
    if request.app[AUTH].allows(request):
        raise web.HTTPSeeOther("/")
    return _page("login.html")


async def _login(request: web.Request) -> web.StreamResponse:
    auth = request.app[AUTH]
    form = await request.post()
    candidate = form.get("token")
    if isinstance(candidate, str) and auth.token_matches(candidate.strip()):
        response = web.HTTPSeeOther("/")
        auth.set_cookie(response)
        raise response
    log.warning("login with a wrong token from %s", request.remote)
    text = (STATIC_DIR / "login.html").read_text(encoding="utf-8")
    return _page(
        "login.html", status=401, text=text.replace(LOGIN_ERROR_MARKER, 'id="login-error"')
    )


async def _logout(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther("/login")
    Auth.clear_cookie(response)
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


async def _offer(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        return error_response(400, 'the body is not JSON; send {"sdp": "...", "type": "offer"}')
    if not (
        isinstance(body, dict)
        and isinstance(body.get("sdp"), str)
        and isinstance(body.get("type"), str)
    ):
        return error_response(400, 'expected a JSON object {"sdp": string, "type": "offer"}')
    try:
        offer = RTCSessionDescription(sdp=body["sdp"], type=body["type"])
    except ValueError:
        return error_response(400, f'expected "type": "offer", got {body["type"]!r}')
    try:
        answer = await request.app[PEERS].answer(offer)
    except OfferError as exc:
        headers = {"Retry-After": "5"} if exc.status == 503 else None
        log.info("offer from %s refused (%d): %s", request.remote, exc.status, exc.reason)
        return error_response(exc.status, exc.reason, headers)
    return web.json_response({"sdp": answer.sdp, "type": answer.type})


async def _close_peers(app: web.Application) -> None:
    await app[PEERS].close()
