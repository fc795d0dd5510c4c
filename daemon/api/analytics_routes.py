"""Analytics and monitoring: the seed's /api/server-analytics and /api/stats, and /metrics."""

from __future__ import annotations

import dataclasses

from aiohttp import web

from socialsync.common.analytics import AnalyticsQuery, DashboardStats, ServerAnalytics
from socialsync.common.auth import Role
from socialsync.daemon import keys
from socialsync.daemon.api.registry import Ctx, Routes, authorize
from socialsync.daemon.metrics import CONTENT_TYPE

routes = Routes("analytics")


@routes.get("/api/server-analytics", query=AnalyticsQuery, response=ServerAnalytics)
async def server_analytics(ctx: Ctx) -> ServerAnalytics:
    """Usage, cost and generations per server and for the fleet over [since, until), with a time series."""
    return await ctx[keys.ANALYTICS].server_analytics(ctx.query)


@routes.get("/api/stats", response=DashboardStats)
async def stats(ctx: Ctx) -> DashboardStats:
    """The dashboard: servers, queue, today's figures, spend, burn rate and Vast credit."""
    return await ctx[keys.ANALYTICS].stats()


@routes.get("/metrics", role=None, raw=True, errors=(401, 403))
async def metrics(ctx: Ctx) -> web.Response:
    """Prometheus metrics (text format 0.0.4). Needs a viewer credential unless costs.metrics_auth is false."""
    if ctx[keys.SETTINGS].costs.metrics_auth:
        ctx.identity = authorize(dataclasses.replace(ctx.spec, role=Role.VIEWER), ctx.request)
    body = await ctx[keys.METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
