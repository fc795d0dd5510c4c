"""Health and the API's own description."""

from __future__ import annotations

from aiohttp import web

from socialsync.common.wire import WireModel
from socialsync.daemon import keys
from socialsync.daemon.api.openapi import build_openapi
from socialsync.daemon.api.registry import Ctx, Routes

routes = Routes("system")


class Health(WireModel):
    status: str
    version: str
    seq: int


@routes.get("/api/health", role=None, response=Health)
async def health(ctx: Ctx) -> Health:
    """Liveness: answers while the daemon's loop runs."""
    from socialsync.daemon import __version__

    return Health(status="ok", version=__version__, seq=ctx[keys.BUS].seq)


@routes.get("/api/openapi.json", response=dict)
async def openapi(ctx: Ctx) -> web.Response:
    """The OpenAPI 3.1 document of every route, generated from the wire models."""
    return web.json_response(build_openapi(ctx[keys.ROUTES]))
