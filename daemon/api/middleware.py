"""The error middleware (every error body is the seed's) and the identity + rate-limit
middleware (every request counts against its principal, refused ones too)."""

from __future__ import annotations

import itertools
import logging
import secrets
import time

from aiohttp import web

from socialsync.common.errors import ErrorBody, ErrorCode
from socialsync.daemon import keys
from socialsync.daemon.api.registry import AUTH_FAILURE, IDENTITY, REQUEST_ID, client_addr
from socialsync.daemon.errors import AppError, RateLimited
from socialsync.daemon.services.auth import Identity
from socialsync.daemon.services.ratelimit import MUTATING, Decision, category_for

log = logging.getLogger(__name__)

RATELIMIT = web.RequestKey("ratelimit", Decision)
SESSION_COOKIE = "socialsync_session"
REFUSAL_AUDIT_QUIET = 60.0  # seconds without an audited 429 before the next one is
API_KEY_HEADER = "X-API-Key"


def error_response(exc: AppError, request_id: str | None = None) -> web.Response:
    body = ErrorBody(
        error=exc.message,
        details=exc.details,
        code=str(exc.code),
        request_id=request_id,
        fields=exc.extra.get("fields"),
        node_errors=exc.extra.get("node_errors"),
    )
    response = web.Response(
        body=body.model_dump_json(by_alias=True, exclude_none=True),
        status=exc.status,
        content_type="application/json",
    )
    for name, value in exc.headers.items():
        response.headers[name] = value
    return response


HTTP_ERRORS = {
    404: (ErrorCode.NOT_FOUND, "Not found"),
    405: (ErrorCode.METHOD_NOT_ALLOWED, "Method not allowed"),
    413: (ErrorCode.PAYLOAD_TOO_LARGE, "Request body too large"),
}


# Request ids: 16 hex digits as before, a random prefix per process and a counter (no
# call for random bytes per request): unique within a run, distinct across runs.
_ID_PREFIX = secrets.token_hex(4)
_id_counter = itertools.count(secrets.randbelow(1 << 32))


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter) & 0xFFFFFFFF:08x}"


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-Id", "")[:64] or _new_request_id()
    request[REQUEST_ID] = request_id
    try:
        return await handler(request)
    except AppError as exc:
        return error_response(exc, request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, message = HTTP_ERRORS.get(exc.status, (ErrorCode.VALIDATION_ERROR, exc.reason))
        details = f"{request.method} {request.path}"
        if exc.status == 405:
            allowed = sorted(getattr(exc, "allowed_methods", ()) or ())
            details += f" is not allowed; allowed: {', '.join(allowed)}"
        err = AppError(message, details, code=code, status=exc.status)
        if exc.status == 405 and "Allow" in exc.headers:
            err.headers["Allow"] = exc.headers["Allow"]
        return error_response(err, request_id)
    except Exception:
        log.exception("unhandled error request_id=%s method=%s path=%s", request_id, request.method, request.path)
        err = AppError("Internal server error", f"request id {request_id}")
        return error_response(err, request_id)


async def resolve_identity(request: web.Request) -> Identity:
    auth = request.app[keys.AUTH]
    token = None
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        token = header[7:].strip()
    elif request.headers.get(API_KEY_HEADER):
        token = request.headers[API_KEY_HEADER].strip()
    elif request.path == "/ws" and request.query.get("token"):
        token = request.query["token"]
    if token:
        identity = await auth.identify_key(token)
        if identity is not None:
            return identity
        request[AUTH_FAILURE] = "key"
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and not token:
        identity = await auth.identify_session(cookie)
        if identity is not None:
            return identity
        request[AUTH_FAILURE] = "session"
    return Identity("anonymous", client_addr(request) or "unknown", None)


@web.middleware
async def identity_middleware(request: web.Request, handler) -> web.StreamResponse:
    identity = await resolve_identity(request)
    request[IDENTITY] = identity
    if request.path.startswith("/api/") or request.path == "/ws":
        decision = request.app[keys.LIMITER].hit(identity.rate_key, category_for(request.method, request.path))
        request[RATELIMIT] = decision
        if not decision.allowed:
            exc = RateLimited(
                "Too many requests",
                f"limit is {decision.limit} per {request.app[keys.LIMITER].settings.window_seconds:g} s; "
                f"retry in {decision.retry_after:.0f} s",
                headers={"Retry-After": str(max(1, int(decision.retry_after + 0.999)))},
            )
            await _audit_refusal(request, identity.rate_key, exc)
            raise exc
    return await handler(request)


async def _audit_refusal(request: web.Request, principal: str, exc: RateLimited) -> None:
    """A refused mutating request is audited like any other, but once per principal and
    route while the refusals go on (a flood of 429s must not become a flood of rows):
    the next row comes after a minute without one."""
    refuse = getattr(request.match_info.handler, "audit_refusal", None)
    if refuse is None or request.method not in MUTATING:
        return
    seen = request.app[keys.REFUSALS_AUDITED]
    key = (principal, request.method, request.match_info.route.resource.canonical
           if request.match_info.route.resource is not None else request.path)
    now = time.monotonic()
    last = seen.get(key)
    seen[key] = now
    if last is not None and now - last < REFUSAL_AUDIT_QUIET:
        return
    if len(seen) > 10_000:  # forget the oldest half: the map stays small under any flood
        for old in sorted(seen, key=seen.__getitem__)[:5_000]:
            del seen[old]
    await refuse(request, exc)


async def add_common_headers(request: web.Request, response: web.StreamResponse) -> None:
    decision = request.get(RATELIMIT)
    if decision is not None:
        response.headers.update(decision.headers())
    request_id = request.get(REQUEST_ID)
    if request_id:
        response.headers["X-Request-Id"] = request_id
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cache-Control", "no-store")
