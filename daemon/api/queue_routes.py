"""The fleet-wide queue: ``POST /api/generate``, ``GET /api/queue`` and the webhook
deliveries (dead letters included). Cancel a queued item with ``DELETE /api/generations/:id``."""

from __future__ import annotations

from socialsync.common.auth import Role
from socialsync.common.queue import (
    DeliveryQuery,
    QueuedGenerateRequest,
    QueuedResponse,
    QueueQuery,
    QueueView,
    WebhookDelivery,
)
from socialsync.daemon import keys
from socialsync.daemon.api.registry import Ctx, Routes

routes = Routes("queue")


@routes.post("/api/generate", role=Role.OPERATOR, body=QueuedGenerateRequest, response=QueuedResponse, status=202,
             action="generation.enqueue", target_type="generation", errors=(400, 404, 429))
async def enqueue(ctx: Ctx) -> QueuedResponse:
    """Queue a generation for whichever ready server fits (model-aware, fair per principal)."""
    body: QueuedGenerateRequest = ctx.body
    ctx.audit["details"] = {"priority": body.priority, "workflowId": body.workflow_id,
                            "webhook": body.webhook_url is not None}
    queued = await ctx[keys.SCHEDULER].enqueue(body, ctx.actor)
    ctx.audit["target_id"] = queued.generation_id
    return queued


@routes.get("/api/queue", query=QueueQuery, response=QueueView)
async def queue(ctx: Ctx) -> QueueView:
    """The queue: waiting items in dispatch order with estimated starts, then the running ones."""
    return await ctx[keys.SCHEDULER].view(ctx.query.limit)


@routes.get("/api/webhooks/deliveries", role=Role.OPERATOR, query=DeliveryQuery, response=list[WebhookDelivery])
async def deliveries(ctx: Ctx) -> list[WebhookDelivery]:
    """Webhook deliveries, newest first, every attempt; ``status=dead`` lists the dead letters."""
    q: DeliveryQuery = ctx.query
    return await ctx[keys.WEBHOOKS].list(q.status, q.limit, q.before_id)
