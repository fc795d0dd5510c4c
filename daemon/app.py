"""The application factory: every resource is a ``cleanup_ctx`` (open, yield, close),
every shared object a typed ``web.AppKey`` from ``keys``."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from socialsync.daemon import __version__, keys
from socialsync.daemon.api import all_routes
from socialsync.daemon.api.middleware import add_common_headers, error_middleware, identity_middleware
from socialsync.daemon.api.registry import Ctx, make_handler, outcome_of
from socialsync.daemon.events import EventBus
from socialsync.daemon.services.audit import AuditService
from socialsync.daemon.services.auth import AuthService
from socialsync.daemon.services.ratelimit import RateLimiter
from socialsync.daemon.settings import Settings
from socialsync.daemon.store.db import Database

log = logging.getLogger(__name__)


async def audit_request(ctx: Ctx, exc: BaseException | None) -> None:
    """The one audit row of a mutating request."""
    outcome, details = outcome_of(exc, ctx.audit.get("denied", False))
    details = {**ctx.audit.get("details", {}), **details}
    target_id = ctx.audit.get("target_id")
    if target_id is None:
        target_id = ctx.request.match_info.get("id") or ctx.request.match_info.get("serverId")
    try:
        await ctx.app[keys.AUDIT].record(
            ctx.spec.action or f"{ctx.spec.method} {ctx.spec.path}",
            actor=ctx.audit.get("actor") or ctx.identity.name,
            target_type=ctx.spec.target_type,
            target_id=target_id,
            outcome=outcome,
            client_addr=ctx.client_addr,
            request_id=ctx.request_id,
            details=details,
        )
    except Exception:
        log.exception("audit write failed action=%s", ctx.spec.action)


async def _state(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings.images_dir.mkdir(parents=True, exist_ok=True)
    settings.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    yield


async def _database(app: web.Application) -> AsyncIterator[None]:
    db = await Database.open(app[keys.SETTINGS].db_path)
    app[keys.DB] = db
    yield
    await db.close()


async def _core_services(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    app[keys.AUTH] = AuthService(app[keys.DB], settings.session_ttl_hours)
    app[keys.AUDIT] = AuditService(app[keys.DB], app[keys.BUS], settings.secrets())
    await app[keys.AUTH].ensure_admin_key(settings.admin_key_path)
    yield


async def _http_session(app: web.Application) -> AsyncIterator[None]:
    """One client session for every outgoing call (Vast, ComfyUI, webhooks)."""
    session = aiohttp.ClientSession(
        headers={"User-Agent": f"socialsync/{__version__}"},
        connector=aiohttp.TCPConnector(limit=200, limit_per_host=16),
        skip_auto_headers=("Origin",),
    )
    app[keys.HTTP] = session
    yield
    await session.close()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, identity_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[keys.SETTINGS] = settings
    app[keys.BUS] = EventBus(settings.events.ring_size)
    app[keys.LIMITER] = RateLimiter(settings.limits)
    app[keys.EXTRAS] = {}
    app.on_response_prepare.append(add_common_headers)
    app.cleanup_ctx.extend([_state, _database, _core_services, _http_session])

    specs = all_routes()
    app[keys.ROUTES] = specs
    for spec in specs:
        app.router.add_route(spec.method, spec.path, make_handler(spec, audit_request), name=None)
    log.debug("routes registered count=%d pid=%d", len(specs), os.getpid())
    return app
