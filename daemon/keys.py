"""Every shared object of the application, as a typed ``web.AppKey``, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from socialsync.daemon.events import EventBus
from socialsync.daemon.services.audit import AuditService
from socialsync.daemon.services.auth import AuthService
from socialsync.daemon.services.ratelimit import RateLimiter
from socialsync.daemon.settings import Settings
from socialsync.daemon.store.db import Database

if TYPE_CHECKING:
    from socialsync.daemon.api.registry import RouteSpec

SETTINGS = web.AppKey("settings", Settings)
DB = web.AppKey("db", Database)
BUS = web.AppKey("bus", EventBus)
AUTH = web.AppKey("auth", AuthService)
AUDIT = web.AppKey("audit", AuditService)
LIMITER = web.AppKey("limiter", RateLimiter)
HTTP = web.AppKey("http", aiohttp.ClientSession)
ROUTES = web.AppKey("routes", list["RouteSpec"])
EXTRAS = web.AppKey("extras", dict[str, Any])
