"""The application factory: every resource is a ``cleanup_ctx`` (open, yield, close),
every shared object a typed ``web.AppKey`` from ``keys``."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from socialsync.daemon import __version__, keys
from socialsync.daemon.api import all_routes
from socialsync.daemon.api.events_routes import close_event_streams, events_ctx
from socialsync.daemon.api.middleware import add_common_headers, error_middleware, identity_middleware
from socialsync.daemon.api.registry import Ctx, make_handler, outcome_of
from socialsync.daemon.demo import demo_ctx
from socialsync.daemon.events import EventBus
from socialsync.daemon.metrics import Metrics
from socialsync.daemon.services.analytics import AnalyticsService, ReadConnection
from socialsync.daemon.services.audit import AuditService
from socialsync.daemon.services.auth import AuthService
from socialsync.daemon.services.comfy_pool import ComfyPool
from socialsync.daemon.services.costs import CostService
from socialsync.daemon.services.deadman import DeadmanService
from socialsync.daemon.services.fleet import FleetService
from socialsync.daemon.services.generations import GenerationService
from socialsync.daemon.services.images import ImageStore
from socialsync.daemon.services.models import ModelService
from socialsync.daemon.services.ratelimit import RateLimiter
from socialsync.daemon.services.readiness import Readiness
from socialsync.daemon.services.scheduler import Scheduler
from socialsync.daemon.services.ssh import HostKeys, KeyAttacher, LazyIdentity
from socialsync.daemon.services.webhooks import WebhookService
from socialsync.daemon.services.workflows import WorkflowService
from socialsync.daemon.settings import Settings
from socialsync.daemon.store import servers as servers_store
from socialsync.daemon.store.db import Database
from socialsync.daemon.vast import DEFAULT_PACING, RetryPolicy, VastClient

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


async def _vast(app: web.Application) -> AsyncIterator[None]:
    """The Vast client, on the shared session; None until a key is configured."""
    settings = app[keys.SETTINGS].vast
    client = None
    if settings.api_key is not None and settings.api_key.get_secret_value():
        client = VastClient(
            settings.api_key.get_secret_value(),
            base_url=settings.base_url,
            session=app[keys.HTTP],
            timeout=settings.request_timeout,
            retry=RetryPolicy(base=settings.retry_base, deadline=settings.retry_deadline),
            pacing=DEFAULT_PACING if settings.pacing else {},
            min_reliability=settings.min_reliability,
            min_direct_ports=settings.min_direct_ports,
            on_call=app[keys.METRICS].on_vast_call,
        )
    app[keys.VAST] = client
    yield


async def _background(app: web.Application, *coros) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(c) for c in coros]
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _fleet(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    install_id = await servers_store.install_id(app[keys.DB])
    fleet = FleetService(app[keys.DB], app[keys.BUS], app[keys.AUDIT], settings, app[keys.VAST], install_id)
    app[keys.FLEET] = fleet
    await fleet.load_comfy_auth()
    app[keys.COMFY] = ComfyPool(app[keys.HTTP], settings.comfy, client_id=f"socialsync-{install_id}",
                                on_call=app[keys.METRICS].on_comfy_call, auth_for=fleet.comfy_auth.get)
    readiness = Readiness(fleet, app[keys.COMFY], settings.comfy)
    app[keys.READINESS] = readiness
    await readiness.start()
    async for _ in _background(app, *([fleet.run()] if fleet.vast is not None else [])):
        yield
    await readiness.stop()


async def _generations(app: web.Application) -> AsyncIterator[None]:
    """Workflows and generations: one watcher per ready server; what a previous run left
    active is reconciled before the first generate is accepted."""
    settings = app[keys.SETTINGS]
    workflows = WorkflowService(app[keys.DB])
    await workflows.seed_builtin()
    app[keys.WORKFLOWS] = workflows
    generations = GenerationService(app[keys.DB], app[keys.BUS], app[keys.FLEET], app[keys.COMFY],
                                    app[keys.READINESS], workflows, ImageStore(settings.images_dir))
    app[keys.GENERATIONS] = generations
    # The scheduler hooks into generations before their reconcile can fail anything.
    webhooks = WebhookService(app[keys.DB], app[keys.HTTP], settings.scheduler, settings.state_dir)
    app[keys.WEBHOOKS] = webhooks
    scheduler = Scheduler(app[keys.DB], app[keys.BUS], app[keys.FLEET], generations, webhooks, settings.scheduler)
    app[keys.SCHEDULER] = scheduler
    if keys.COSTS in app:
        app[keys.COSTS].queued_work = scheduler.servers_with_work
    deadman = DeadmanService(app[keys.FLEET], app[keys.COMFY], settings)
    app[keys.DEADMAN] = deadman
    await webhooks.start()
    await generations.start()
    await scheduler.start()
    await deadman.start()
    yield
    await deadman.stop()
    await scheduler.stop()
    await generations.stop()
    await webhooks.stop()


async def _models(app: web.Application) -> AsyncIterator[None]:
    """Model lists and downloads; our SSH key and its attachment to every Vast instance."""
    settings = app[keys.SETTINGS]
    fleet = app[keys.FLEET]
    ssh_dir = settings.state_dir / "ssh"
    identity = LazyIdentity(ssh_dir, comment=f"socialsync-{fleet.install_id}")  # created on first use
    attacher = KeyAttacher(fleet, identity, retry_base=settings.models.retry_base)
    models = ModelService(app[keys.DB], app[keys.BUS], app[keys.AUDIT], fleet, app[keys.COMFY], settings, identity,
                          HostKeys(ssh_dir / "known_hosts.json", settings.models.ssh_host_key_policy), attacher)
    app[keys.MODELS] = models
    await models.start()
    await attacher.start()
    yield
    await models.stop()
    await attacher.stop()


async def _costs(app: web.Application) -> AsyncIterator[None]:
    """Analytics, the /metrics gauges, and cost control (its launch guard and loop)."""
    settings = app[keys.SETTINGS]
    fleet = app[keys.FLEET]
    heavy = await ReadConnection.open(settings.db_path)  # analytics windows read on their own
    analytics = AnalyticsService(app[keys.DB], settings, app[keys.VAST], heavy=heavy)
    app[keys.ANALYTICS] = analytics
    costs = CostService(app[keys.DB], app[keys.BUS], app[keys.AUDIT], fleet, analytics, settings)
    app[keys.COSTS] = costs
    if costs.guards_launches:
        fleet.add_launch_guard(costs.launch_guard)
        fleet.add_start_guard(costs.start_guard)
    app[keys.METRICS].bind(gauges=analytics.gauges, hub=app.get(keys.HUB), zmq=app.get(keys.ZMQ_PUB),
                           limiter=app[keys.LIMITER])
    analytics.refresh_credit()
    try:
        async for _ in _background(app, *([costs.run()] if fleet.vast is not None else [])):
            yield
    finally:
        await analytics.close()
        await heavy.close()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, identity_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[keys.SETTINGS] = settings
    app[keys.BUS] = EventBus(settings.events.ring_size)
    app[keys.LIMITER] = RateLimiter(settings.limits)
    app[keys.REFUSALS_AUDITED] = {}
    app[keys.EXTRAS] = {}
    app[keys.METRICS] = Metrics()
    app[keys.BUS].add_listener(app[keys.METRICS].on_event)
    app.on_response_prepare.append(add_common_headers)
    app.on_shutdown.append(close_event_streams)  # websockets get 1001 before handlers are awaited
    app.cleanup_ctx.extend([_state, _database, _core_services, _http_session, events_ctx, demo_ctx, _vast, _fleet])
    app.cleanup_ctx.append(_models)
    app.cleanup_ctx.append(_costs)
    app.cleanup_ctx.append(_generations)

    specs = all_routes()
    app[keys.ROUTES] = specs
    for spec in specs:
        app.router.add_route(spec.method, spec.path, make_handler(spec, audit_request), name=None)
    log.debug("routes registered count=%d pid=%d", len(specs), os.getpid())
    return app
