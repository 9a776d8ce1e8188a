"""The model API: which bundle the server is serving, and its training report.

Routes (they need the token, like the rest of the server)::

    GET /api/model                          {"version", "created", "store_revision",
                                             "backbone", "head_kind", "threshold",
                                             "labels", "metrics", "report", "plots"}
                                            ({"version": null, ...} before any bundle)
    GET /api/model/{version}/files/{name}   a plot (PNG) of that bundle's report

``report`` is the bundle's ``report.json`` as written by the trainer (null when it
has none); ``plots`` are the URLs of the PNG files in the bundle directory. A plot
URL names its version, so it is cached privately for good; one of a version no
longer served is 404.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re

from aiohttp import web

from facecore.bundle import Bundle
from streamer.web.server import ENGINE, error_response

__all__ = ["REPORT_JSON", "add_model_routes"]

log = logging.getLogger(__name__)

REPORT_JSON = "report.json"
_PLOT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\.png")
# a plot: its URL names its bundle version, so its content never changes; never shared
CACHE_FOREVER = "private, max-age=31536000, immutable"


def add_model_routes(app: web.Application) -> None:
    """Add the routes above to the server's ``app`` (`streamer.web.server.create_app`)."""
    app.router.add_get("/api/model", _model)
    app.router.add_get("/api/model/{version}/files/{name}", _model_file)


async def _model(request: web.Request) -> web.Response:
    model = request.app[ENGINE].recognizer.model
    if model is None:
        return web.json_response({"version": None, "labels": [], "metrics": {}, "report": None})
    bundle = model.bundle
    report, plots = await asyncio.get_running_loop().run_in_executor(None, _report, bundle)
    manifest = bundle.manifest
    return web.json_response(
        {
            "version": manifest.version,
            "created": manifest.created,
            "store_revision": manifest.store_revision,
            "backbone": manifest.backbone_name,
            "head_kind": manifest.head_kind,
            "threshold": manifest.threshold,
            "labels": list(model.gallery.labels),  # as the store names them now
            "metrics": manifest.metrics,
            "report": report,
            "plots": [f"/api/model/{manifest.version}/files/{name}" for name in plots],
        }
    )


def _report(bundle: Bundle) -> tuple[object, list[str]]:
    """The bundle's training report (None when it has none or it is unreadable) and
    the names of its plots."""
    report: object = None
    try:
        report = json.loads((bundle.path / REPORT_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        log.warning("the training report of %s is unreadable: %s", bundle.path, exc)
    try:
        plots = sorted(p.name for p in bundle.path.iterdir() if _PLOT_NAME.fullmatch(p.name))
    except OSError:
        plots = []
    return report, plots


async def _model_file(request: web.Request) -> web.StreamResponse:
    bundle = request.app[ENGINE].bundle
    name = request.match_info["name"]
    if bundle is None or request.match_info["version"] != str(bundle.manifest.version):
        return error_response(404, "that model version is not the one being served")
    path = bundle.path / name
    if not _PLOT_NAME.fullmatch(name) or not path.is_file():
        return error_response(404, f"the model has no plot named {name!r}")
    return web.FileResponse(path, headers={"Cache-Control": CACHE_FOREVER})
