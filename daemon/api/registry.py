"""The route registry: one declaration per route carries its method, path, role, audit
action and request/response models. Auth, auditing, validation and the OpenAPI
document all read it, so a route cannot be added without them."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from socialsync.common.audit import Outcome
from socialsync.common.auth import Role
from socialsync.common.errors import ErrorCode
from socialsync.daemon.errors import AppError, BadRequest, Forbidden, InvalidApiKey, NotFound, Unauthorized
from socialsync.daemon.services.auth import Identity
from socialsync.daemon.services.ratelimit import MUTATING

Handler = Callable[["Ctx"], Awaitable[Any]]
IDENTITY = web.RequestKey("identity", Identity)
AUTH_FAILURE = web.RequestKey("auth_failure", str)
REQUEST_ID = web.RequestKey("request_id", str)


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    handler: Handler
    role: Role | None  # None: public
    action: str | None = None  # audit action of a mutating route
    target_type: str | None = None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: Any = None
    status: int = 200
    summary: str = ""
    tag: str = ""
    websocket: bool = False
    errors: tuple[int, ...] = ()
    raw: bool = False  # the handler returns a web.StreamResponse itself

    @functools.cached_property
    def adapter(self) -> TypeAdapter | None:
        return None if self.response is None else TypeAdapter(self.response)


class Routes:
    """A module's route table (declarations only; no state)."""

    def __init__(self, tag: str):
        self.tag = tag
        self.specs: list[RouteSpec] = []

    def route(self, method: str, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        kw.setdefault("role", Role.VIEWER)
        kw.setdefault("tag", self.tag)

        def register(handler: Handler) -> Handler:
            summary = kw.pop("summary", None) or (handler.__doc__ or "").strip().split("\n")[0]
            self.specs.append(RouteSpec(method, path, handler, summary=summary, **kw))
            return handler

        return register

    def get(self, path: str, **kw: Any):
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any):
        return self.route("POST", path, **kw)

    def put(self, path: str, **kw: Any):
        return self.route("PUT", path, **kw)

    def patch(self, path: str, **kw: Any):
        return self.route("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any):
        return self.route("DELETE", path, **kw)


@dataclass
class Ctx:
    """What a handler gets: the request, who made it, and its validated input."""

    request: web.Request
    spec: RouteSpec
    identity: Identity
    body: Any = None
    query: Any = None
    audit: dict[str, Any] = field(default_factory=dict)

    @property
    def app(self) -> web.Application:
        return self.request.app

    def __getitem__(self, key: web.AppKey) -> Any:
        return self.request.app[key]

    def int_param(self, name: str = "id", not_found: Callable[[str], AppError] | None = None) -> int:
        raw = self.request.match_info[name]
        try:
            value = int(raw)
            if value < 0 or value > 2**62:
                raise ValueError
        except ValueError:
            raise (not_found or _default_not_found)(raw) from None
        return value

    @property
    def actor(self) -> str:
        return self.identity.name

    @property
    def client_addr(self) -> str | None:
        return client_addr(self.request)

    @property
    def request_id(self) -> str | None:
        return self.request.get(REQUEST_ID)


def _default_not_found(raw: str) -> AppError:
    return NotFound("Not found", f"no such id: {raw}")


def client_addr(request: web.Request) -> str | None:
    return request.remote


def validation_error(exc: PydanticValidationError, where: str) -> BadRequest:
    fields = []
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        path = ".".join(str(p) for p in err["loc"]) or where
        fields.append({"path": path, "message": err["msg"], "type": err["type"]})
    details = "; ".join(f"{f['path']}: {f['message']}" for f in fields)
    return BadRequest(f"Invalid {where}", details, extra={"fields": fields})


async def parse_json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        raise BadRequest("Invalid JSON body", "the request body is empty; a JSON object is required")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("Invalid JSON body", str(exc)) from None


def authorize(spec: RouteSpec, request: web.Request) -> Identity:
    identity: Identity = request[IDENTITY]
    if spec.role is None:
        return identity
    if identity.role is None:
        failure = request.get(AUTH_FAILURE)
        if failure == "key":
            raise InvalidApiKey("Invalid API key", "the API key is unknown or revoked")
        if failure == "session":
            raise Unauthorized("Session expired", "log in again")
        raise Unauthorized(
            "Authentication required", "send an API key (Authorization: Bearer or X-API-Key) or log in"
        )
    if not identity.role.allows(spec.role):
        raise Forbidden("Insufficient role", f"this needs the {spec.role} role; you have {identity.role}")
    return identity


def make_handler(spec: RouteSpec, audit_hook: Callable[..., Awaitable[None]]) -> Callable:
    """Wrap a handler: authorize, validate, call, serialize, audit."""
    audited = spec.method in MUTATING and spec.action is not None

    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = Ctx(request, spec, request[IDENTITY])
        try:
            try:
                ctx.identity = authorize(spec, request)
            except AppError:
                ctx.audit["denied"] = True
                raise
            if spec.query is not None:
                try:
                    ctx.query = spec.query.model_validate(dict(request.query))
                except PydanticValidationError as exc:
                    raise validation_error(exc, "query parameters") from None
            if spec.body is not None:
                data = await parse_json(request)
                try:
                    ctx.body = spec.body.model_validate(data)
                except PydanticValidationError as exc:
                    raise validation_error(exc, "request body") from None
            result = await spec.handler(ctx)
            response = result if isinstance(result, web.StreamResponse) else render(spec, result)
        except Exception as exc:
            if audited:
                await audit_hook(ctx, exc)
            raise
        if audited:
            await audit_hook(ctx, None)
        return response

    async def audit_refusal(request: web.Request, exc: BaseException) -> None:
        """The audit row of a request refused before it reached this route (rate limit)."""
        if audited:
            ctx = Ctx(request, spec, request[IDENTITY])
            ctx.audit["denied"] = True
            await audit_hook(ctx, exc)

    handle.spec = spec  # type: ignore[attr-defined]
    handle.audit_refusal = audit_refusal  # type: ignore[attr-defined]
    return handle


def render(spec: RouteSpec, result: Any) -> web.Response:
    if result is None and spec.status == 204:
        return web.Response(status=204)
    body = spec.adapter.dump_json(result, by_alias=True) if spec.adapter else orjson.dumps(result)
    return web.Response(body=body, status=spec.status, content_type="application/json")


def outcome_of(exc: BaseException | None, denied: bool = False) -> tuple[Outcome, dict[str, Any]]:
    """Success; denied (the principal may not do this); or failure (it was tried)."""
    if exc is None:
        return Outcome.SUCCESS, {}
    if isinstance(exc, AppError):
        outcome = Outcome.DENIED if denied else Outcome.FAILURE
        return outcome, {"status": exc.status, "code": str(exc.code), "error": exc.message}
    return Outcome.FAILURE, {"status": 500, "code": str(ErrorCode.INTERNAL_ERROR)}
