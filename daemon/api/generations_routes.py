"""Image generation: the seed's generate and generations routes, one generation, cancel."""

from __future__ import annotations

from socialsync.common.auth import Role
from socialsync.common.generations import (
    AllGenerationsQuery,
    GenerateRequest,
    GenerateResponse,
    Generation,
    GenerationListQuery,
)
from socialsync.daemon import keys
from socialsync.daemon.api.registry import Ctx, Routes
from socialsync.daemon.errors import AppError, NotFound, ServerNotFound

routes = Routes("generations")


def server_id(ctx: Ctx) -> int:
    return ctx.int_param("serverId", ServerNotFound)


def generation_id(ctx: Ctx) -> int:
    return ctx.int_param("id", lambda raw: NotFound("Generation not found", f"no generation with id {raw}"))


@routes.post("/api/comfy/{serverId}/generate", role=Role.OPERATOR, body=GenerateRequest, response=GenerateResponse,
             status=202, action="generation.create", target_type="generation", errors=(409, 422, 503))
async def generate(ctx: Ctx) -> GenerateResponse:
    """Start an image generation on a ready server; it runs in the background."""
    sid = server_id(ctx)
    body: GenerateRequest = ctx.body
    ctx.audit["details"] = {"serverId": sid, "workflowId": body.workflow_id}
    try:
        submitted = await ctx[keys.GENERATIONS].submit(sid, body, ctx.actor)
    except AppError as exc:
        if "generation_id" in exc.extra:
            ctx.audit["target_id"] = exc.extra["generation_id"]
        raise
    ctx.audit["target_id"] = submitted.generation_id
    return GenerateResponse(generation_id=submitted.generation_id, queue_id=submitted.prompt_id,
                            estimated_time=submitted.estimated_time)


@routes.get("/api/comfy/{serverId}/generations", query=GenerationListQuery, response=list[Generation])
async def server_generations(ctx: Ctx) -> list[Generation]:
    """A server's generations, newest first (limit 50, offset 0, optional status)."""
    q: GenerationListQuery = ctx.query
    return await ctx[keys.GENERATIONS].list(server_id=server_id(ctx), status=q.status, limit=q.limit,
                                            offset=q.offset, before_id=q.before_id)


@routes.get("/api/generations", query=AllGenerationsQuery, response=list[Generation], errors=(404,))
async def all_generations(ctx: Ctx) -> list[Generation]:
    """Generations of every server, newest first (optional serverId and status)."""
    q: AllGenerationsQuery = ctx.query
    return await ctx[keys.GENERATIONS].list(server_id=q.server_id, status=q.status, limit=q.limit,
                                            offset=q.offset, before_id=q.before_id)


@routes.get("/api/generations/{id}", response=Generation)
async def get_generation(ctx: Ctx) -> Generation:
    """One generation with its parameters, seed, timings and images."""
    return await ctx[keys.GENERATIONS].get(generation_id(ctx))


@routes.delete("/api/generations/{id}", role=Role.OPERATOR, response=Generation, action="generation.cancel",
               target_type="generation", errors=(409,))
async def cancel_generation(ctx: Ctx) -> Generation:
    """Cancel one queued or running generation (dequeued, or interrupted if it is the one running)."""
    return await ctx[keys.GENERATIONS].cancel(generation_id(ctx), ctx.actor)
