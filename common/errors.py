"""Error codes of the API and the seed's error body ``{error, details, code}``."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from socialsync.common.wire import WireModel


class ErrorCode(StrEnum):
    VALIDATION_ERROR = "VALIDATION_ERROR"
    UNAUTHORIZED = "UNAUTHORIZED"
    INVALID_API_KEY = "INVALID_API_KEY"
    INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    SERVER_NOT_FOUND = "SERVER_NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    CONFLICT = "CONFLICT"
    SERVER_NOT_READY = "SERVER_NOT_READY"
    OFFER_UNAVAILABLE = "OFFER_UNAVAILABLE"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    GENERATION_FAILED = "GENERATION_FAILED"
    RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    INSUFFICIENT_CREDIT = "INSUFFICIENT_CREDIT"
    VAST_AUTH_FAILED = "VAST_AUTH_FAILED"
    VAST_UNAVAILABLE = "VAST_UNAVAILABLE"
    VAST_ERROR = "VAST_ERROR"
    COMFY_UNAVAILABLE = "COMFY_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class ErrorBody(WireModel):
    """What every error response carries. ``details`` is human-readable text; structured
    extras (field paths, node errors, the request id) ride beside it."""

    error: str
    details: str = ""
    code: str
    request_id: str | None = None
    fields: list[dict[str, Any]] | None = None
    node_errors: dict[str, Any] | None = None


class ApiError(Exception):
    """Raised by the daemon's client when the daemon answers with an error body."""

    def __init__(self, status: int, code: str, error: str, details: str = "", body: dict | None = None):
        super().__init__(f"{code}: {error}" + (f" ({details})" if details else ""))
        self.status = status
        self.code = code
        self.error = error
        self.details = details
        self.body = body or {}
