"""Sessions, API keys and the audit log."""

from __future__ import annotations

from aiohttp import web

from socialsync.common.audit import AuditEntry, AuditQuery
from socialsync.common.auth import (
    ApiKey,
    ApiKeyCreate,
    ApiKeyCreated,
    LoginRequest,
    Me,
    MessageResponse,
    Role,
)
from socialsync.daemon import keys
from socialsync.daemon.api.middleware import SESSION_COOKIE
from socialsync.daemon.api.registry import Ctx, Routes
from socialsync.daemon.errors import NotFound

routes = Routes("auth")


@routes.post(
    "/api/auth/login", role=None, body=LoginRequest, response=Me, action="auth.login", target_type="session",
    errors=(401,),
)
async def login(ctx: Ctx) -> web.Response:
    """Log in with a username and password; sets an HttpOnly session cookie."""
    ctx.audit["actor"] = ctx.body.username
    token, identity = await ctx[keys.AUTH].login(ctx.body.username, ctx.body.password)
    ctx.identity = identity
    settings = ctx[keys.SETTINGS]
    response = web.Response(
        body=Me(principal=identity.principal()).model_dump_json(by_alias=True), content_type="application/json"
    )
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=settings.cookie_secure,
        max_age=int(settings.session_ttl_hours * 3600),
        path="/",
    )
    return response


@routes.post("/api/auth/logout", role=Role.VIEWER, response=MessageResponse, action="auth.logout",
             target_type="session")
async def logout(ctx: Ctx) -> web.Response:
    """End the current session."""
    token = ctx.request.cookies.get(SESSION_COOKIE)
    if token:
        await ctx[keys.AUTH].logout(token)
    response = web.Response(
        body=MessageResponse(message="Logged out").model_dump_json(by_alias=True), content_type="application/json"
    )
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


@routes.get("/api/auth/me", response=Me)
async def me(ctx: Ctx) -> Me:
    """Who the credentials of this request belong to."""
    return Me(principal=ctx.identity.principal())


@routes.get("/api/api-keys", role=Role.ADMIN, response=list[ApiKey])
async def list_keys(ctx: Ctx) -> list[ApiKey]:
    """Every API key (never the keys themselves)."""
    return await ctx[keys.AUTH].list_keys()


@routes.post("/api/api-keys", role=Role.ADMIN, body=ApiKeyCreate, response=ApiKeyCreated, status=201,
             action="api_key.create", target_type="api_key")
async def create_key(ctx: Ctx) -> ApiKeyCreated:
    """Create an API key; the key is in this response and nowhere else, ever."""
    created = await ctx[keys.AUTH].create_key(ctx.body.name, ctx.body.role, created_by=ctx.actor)
    ctx.audit.update(target_id=created.id, details={"name": created.name, "role": str(created.role)})
    return created


@routes.delete("/api/api-keys/{id}", role=Role.ADMIN, response=ApiKey, action="api_key.revoke", errors=(409,),
               target_type="api_key")
async def revoke_key(ctx: Ctx) -> ApiKey:
    """Revoke an API key; requests with it are refused from now on."""
    key_id = ctx.int_param("id", lambda raw: NotFound("API key not found", f"no API key with id {raw}"))
    revoked = await ctx[keys.AUTH].revoke_key(key_id)
    ctx.audit["details"] = {"name": revoked.name}
    return revoked


@routes.get("/api/audit-logs", role=Role.VIEWER, query=AuditQuery, response=list[AuditEntry])
async def audit_logs(ctx: Ctx) -> list[AuditEntry]:
    """The audit trail, newest first, filtered."""
    return await ctx[keys.AUDIT].query(ctx.query)
