"""Every shared object of the application, as a typed ``web.AppKey``, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from socialsync.daemon.events import EventBus
from socialsync.daemon.events.hub import WebSocketHub
from socialsync.daemon.events.zmq_pub import ZmqPublisher
from socialsync.daemon.metrics import Metrics
from socialsync.daemon.services.analytics import AnalyticsService
from socialsync.daemon.services.audit import AuditService
from socialsync.daemon.services.auth import AuthService
from socialsync.daemon.services.comfy_pool import ComfyPool
from socialsync.daemon.services.costs import CostService
from socialsync.daemon.services.deadman import DeadmanService
from socialsync.daemon.services.fleet import FleetService
from socialsync.daemon.services.generations import GenerationService
from socialsync.daemon.services.models import ModelService
from socialsync.daemon.services.ratelimit import RateLimiter
from socialsync.daemon.services.readiness import Readiness
from socialsync.daemon.services.scheduler import Scheduler
from socialsync.daemon.services.webhooks import WebhookService
from socialsync.daemon.services.workflows import WorkflowService
from socialsync.daemon.settings import Settings
from socialsync.daemon.store.db import Database
from socialsync.daemon.vast import VastClient

if TYPE_CHECKING:
    from socialsync.daemon.api.registry import RouteSpec

SETTINGS = web.AppKey("settings", Settings)
DB = web.AppKey("db", Database)
BUS = web.AppKey("bus", EventBus)
HUB = web.AppKey("hub", WebSocketHub)
ZMQ_PUB = web.AppKey("zmq_pub", ZmqPublisher | None)
AUTH = web.AppKey("auth", AuthService)
AUDIT = web.AppKey("audit", AuditService)
LIMITER = web.AppKey("limiter", RateLimiter)
# (principal, method, route) -> monotonic time of its last 429 (see middleware._audit_refusal)
REFUSALS_AUDITED = web.AppKey("refusals_audited", dict)
HTTP = web.AppKey("http", aiohttp.ClientSession)
VAST = web.AppKey("vast", VastClient | None)
FLEET = web.AppKey("fleet", FleetService)
COMFY = web.AppKey("comfy", ComfyPool)
READINESS = web.AppKey("readiness", Readiness)
ROUTES = web.AppKey("routes", list["RouteSpec"])
EXTRAS = web.AppKey("extras", dict[str, Any])
METRICS = web.AppKey("metrics", Metrics)
ANALYTICS = web.AppKey("analytics", AnalyticsService)
COSTS = web.AppKey("costs", CostService)
MODELS = web.AppKey("models", ModelService)
GENERATIONS = web.AppKey("generations", GenerationService)
WORKFLOWS = web.AppKey("workflows", WorkflowService)
SCHEDULER = web.AppKey("scheduler", Scheduler)
WEBHOOKS = web.AppKey("webhooks", WebhookService)
DEADMAN = web.AppKey("deadman", DeadmanService)
