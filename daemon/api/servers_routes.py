"""Server management: the seed's /api/vast-servers routes, offers, attach."""

from __future__ import annotations

from aiohttp import web

from socialsync.common.auth import Role
from socialsync.common.servers import (
    MessageResponse,
    Offer,
    OfferQuery,
    Server,
    ServerAttach,
    ServerCreate,
    ServerLaunched,
    ServerListQuery,
    ServerUpdate,
    StatusChange,
)
from socialsync.daemon import keys
from socialsync.daemon.api.registry import Ctx, Routes
from socialsync.daemon.errors import BadRequest, ServerNotFound

routes = Routes("servers")


def server_id(ctx: Ctx) -> int:
    return ctx.int_param("id", ServerNotFound)


@routes.get("/api/vast-servers", query=ServerListQuery, response=list[Server])
async def list_servers(ctx: Ctx) -> web.Response:
    """Every managed server (destroyed ones only with ?include=destroyed)."""
    include = ctx.query.include
    if include not in (None, "", "destroyed"):
        raise BadRequest("Invalid include", "include may only be 'destroyed'")
    body = await ctx[keys.FLEET].list_servers_json(include_destroyed=include == "destroyed")
    return web.Response(body=body, content_type="application/json")


@routes.get("/api/vast-servers/{id}", response=Server)
async def get_server(ctx: Ctx) -> Server:
    """One server."""
    return await ctx[keys.FLEET].get_server(server_id(ctx))


@routes.get("/api/vast-servers/{id}/history", response=list[StatusChange])
async def server_history(ctx: Ctx) -> list[StatusChange]:
    """A server's status history, newest first."""
    return await ctx[keys.FLEET].history(server_id(ctx))


@routes.get("/api/vast-offers", query=OfferQuery, response=list[Offer], errors=(502, 503))
async def search_offers(ctx: Ctx) -> list[Offer]:
    """Search Vast's offers (verified, rentable, not rented, above the reliability floor)."""
    return await ctx[keys.FLEET].search_offers(ctx.query)


@routes.post("/api/vast-servers", role=Role.OPERATOR, body=ServerCreate, response=ServerLaunched, status=201,
             action="server.launch", target_type="server", errors=(409, 502, 503))
async def launch_server(ctx: Ctx) -> ServerLaunched:
    """Rent an offer and bring ComfyUI up on it."""
    launched, row_id = await ctx[keys.FLEET].launch(ctx.body, ctx.actor)
    ctx.audit.update(target_id=row_id, details={"offerId": str(ctx.body.offer_id), "vastId": launched.vast_id,
                                                "image": ctx.body.image})
    return launched


@routes.post("/api/vast-servers/attach", role=Role.OPERATOR, body=ServerAttach, response=Server, status=201,
             action="server.attach", target_type="server")
async def attach_server(ctx: Ctx) -> Server:
    """Register a self-hosted ComfyUI that Vast does not manage."""
    server = await ctx[keys.FLEET].attach(ctx.body)
    ctx.audit.update(target_id=server.id, details={"name": server.name})
    return server


@routes.patch("/api/vast-servers/{id}", role=Role.OPERATOR, body=ServerUpdate, response=Server,
              action="server.update", target_type="server", errors=(409, 502, 503))
async def update_server(ctx: Ctx) -> Server:
    """Change setupStatus, name or metadata (merged), or stop/start through Vast."""
    ctx.audit["details"] = ctx.body.model_dump(exclude_none=True, mode="json")
    return await ctx[keys.FLEET].update(server_id(ctx), ctx.body)


@routes.post("/api/vast-servers/{id}/reboot", role=Role.OPERATOR, response=Server,
             action="server.reboot", target_type="server", errors=(409, 502, 503))
async def reboot_server(ctx: Ctx) -> Server:
    """Restart the container (the GPU is kept)."""
    return await ctx[keys.FLEET].reboot(server_id(ctx))


@routes.delete("/api/vast-servers/{id}", role=Role.OPERATOR, response=MessageResponse,
               action="server.destroy", target_type="server", errors=(502, 503))
async def destroy_server(ctx: Ctx) -> MessageResponse:
    """Destroy the instance at Vast (billing stops); the row is kept for analytics."""
    sid = server_id(ctx)
    row = await ctx[keys.FLEET].row(sid)
    await ctx[keys.FLEET].destroy(sid)
    if row["kind"] == "attached":
        return MessageResponse(message="Server detached successfully")
    return MessageResponse(message="Server destroyed successfully")
