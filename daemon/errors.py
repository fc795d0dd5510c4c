"""Domain errors. Services raise them; the one error middleware turns them into the
seed's ``{error, details, code}`` body. Nothing else builds an error body."""

from __future__ import annotations

from typing import Any

from socialsync.common.errors import ErrorCode


class AppError(Exception):
    status: int = 500
    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(
        self,
        message: str,
        details: str = "",
        *,
        code: ErrorCode | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.details = details
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}
        self.extra = extra or {}


class BadRequest(AppError):
    status, code = 400, ErrorCode.VALIDATION_ERROR


class Unauthorized(AppError):
    status, code = 401, ErrorCode.UNAUTHORIZED


class InvalidApiKey(AppError):
    status, code = 401, ErrorCode.INVALID_API_KEY


class Forbidden(AppError):
    status, code = 403, ErrorCode.FORBIDDEN


class NotFound(AppError):
    status, code = 404, ErrorCode.NOT_FOUND


class ServerNotFound(NotFound):
    code = ErrorCode.SERVER_NOT_FOUND

    def __init__(self, server_id: object):
        super().__init__("Server not found", f"no server with id {server_id}")


class Conflict(AppError):
    status, code = 409, ErrorCode.CONFLICT


class ServerNotReady(Conflict):
    code = ErrorCode.SERVER_NOT_READY


class RateLimited(AppError):
    status, code = 429, ErrorCode.RATE_LIMIT_EXCEEDED


class UpstreamError(AppError):
    status, code = 502, ErrorCode.VAST_ERROR


class Unavailable(AppError):
    status, code = 503, ErrorCode.VAST_UNAVAILABLE
