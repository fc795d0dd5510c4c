"""Model management: the seed's /api/comfy/:serverId/models routes, downloads, presence."""

from __future__ import annotations

from socialsync.common.auth import Role
from socialsync.common.models_api import (
    AvailableModels,
    AvailableModelsQuery,
    DownloadAccepted,
    ModelDownload,
    ModelDownloadCreate,
    ModelPresence,
    PresenceQuery,
    ServerModels,
)
from socialsync.daemon import keys
from socialsync.daemon.api.registry import Ctx, Routes
from socialsync.daemon.errors import NotFound, ServerNotFound
from socialsync.daemon.services.models import url_for_log

routes = Routes("models")


def server_id(ctx: Ctx) -> int:
    return ctx.int_param("serverId", ServerNotFound)


def download_id(ctx: Ctx) -> int:
    return ctx.int_param("downloadId", lambda raw: NotFound("Download not found", f"no download {raw}"))


@routes.get("/api/comfy/{serverId}/models", response=ServerModels, errors=(409, 503))
async def list_models(ctx: Ctx) -> ServerModels:
    """The server's installed models by folder, with sizes where ComfyUI tells them."""
    return await ctx[keys.MODELS].installed(server_id(ctx))


@routes.get("/api/comfy/{serverId}/available-models", query=AvailableModelsQuery, response=AvailableModels)
async def available_models(ctx: Ctx) -> AvailableModels:
    """The curated catalogue by folder, each entry marked when this server already has it."""
    return await ctx[keys.MODELS].available(server_id(ctx), ctx.query.folder, ctx.query.family)


@routes.post("/api/comfy/{serverId}/models", role=Role.OPERATOR, body=ModelDownloadCreate,
             response=DownloadAccepted, status=202, action="model.download", target_type="server",
             errors=(409,))
async def download_model(ctx: Ctx) -> DownloadAccepted:
    """Have the server fetch a model file into models/<folder>/ (over SSH or ComfyUI-Manager)."""
    body: ModelDownloadCreate = ctx.body
    ctx.audit["details"] = {"name": body.name[:200], "folder": body.folder[:64], "url": url_for_log(body.url)[:300]}
    accepted = await ctx[keys.MODELS].start_download(server_id(ctx), body, ctx.actor)
    ctx.audit["details"].update(downloadId=accepted.download_id, filename=accepted.download.filename,
                                method=str(accepted.method))
    return accepted


@routes.get("/api/comfy/{serverId}/models/downloads", response=list[ModelDownload])
async def list_downloads(ctx: Ctx) -> list[ModelDownload]:
    """The server's model downloads, newest first."""
    return await ctx[keys.MODELS].downloads(server_id(ctx))


@routes.get("/api/comfy/{serverId}/models/downloads/{downloadId}", response=ModelDownload)
async def get_download(ctx: Ctx) -> ModelDownload:
    """One model download."""
    return await ctx[keys.MODELS].download(server_id(ctx), download_id(ctx))


@routes.delete("/api/comfy/{serverId}/models/downloads/{downloadId}", role=Role.OPERATOR, response=ModelDownload,
               action="model.download.cancel", target_type="server", errors=(409,))
async def cancel_download(ctx: Ctx) -> ModelDownload:
    """Stop a running download (the partial file stays on the server; POST again resumes it)."""
    ctx.audit["details"] = {"downloadId": ctx.request.match_info["downloadId"][:20]}
    return await ctx[keys.MODELS].cancel(server_id(ctx), download_id(ctx))


@routes.get("/api/models/presence", query=PresenceQuery, response=ModelPresence)
async def model_presence(ctx: Ctx) -> ModelPresence:
    """Which model is on which server across the fleet (from each server's last listing)."""
    return await ctx[keys.MODELS].presence(refresh=ctx.query.refresh)
