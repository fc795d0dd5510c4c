"""Generated images, served by the daemon (they outlive the servers that made them)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from socialsync.daemon import keys
from socialsync.daemon.api.registry import Ctx, Routes
from socialsync.daemon.errors import NotFound

routes = Routes("images")
CACHE = "private, max-age=31536000, immutable"  # content addressed: a name never changes its bytes


async def _file(path, content_type: str) -> web.FileResponse:
    if path is None or not await asyncio.to_thread(path.is_file):
        raise NotFound("Image not found", "no stored image by that name")
    return web.FileResponse(path, headers={"Content-Type": content_type, "Cache-Control": CACHE})


@routes.get("/api/images/{name}", raw=True, summary="One stored image by content: /api/images/<sha256>.<ext>")
async def image_by_name(ctx: Ctx) -> web.StreamResponse:
    """One stored image by content: ``<sha256>.png`` (or .jpg, .webp, .gif)."""
    found = ctx[keys.GENERATIONS].images.path_for_name(ctx.request.match_info["name"])
    if found is None:
        raise NotFound("Image not found", "an image name is <sha256>.<png|jpg|webp|gif>")
    return await _file(*found)


@routes.get("/api/images/{generationId}/{index}", raw=True)
async def image_of_generation(ctx: Ctx) -> web.StreamResponse:
    """Image number ``index`` (from 0) of a generation."""
    gid = ctx.int_param("generationId", lambda raw: NotFound("Image not found", f"no generation with id {raw}"))
    index = ctx.int_param("index", lambda raw: NotFound("Image not found", f"no image number {raw}"))
    found = await ctx[keys.GENERATIONS].image_file(gid, index)
    if found is None:
        raise NotFound("Image not found", f"generation {gid} has no image number {index}")
    return await _file(*found)
