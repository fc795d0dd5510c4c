"""Typed errors of the Vast client, and the one function that builds them from a response.

Every error carries what the server said (``status``, ``error_code``, ``msg``) and the
logical endpoint name. None of them ever holds the API key: the client redacts the key out
of any text a server echoes back before it builds an error.

Reference: ``vast-api.md`` §7 (error catalogue) and §2 (the three 429 body styles).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = [
    "VastAuthError",
    "VastBadRequestError",
    "VastError",
    "VastInsufficientCreditError",
    "VastNotFoundError",
    "VastOfferUnavailableError",
    "VastProtocolError",
    "VastQuotaExceededError",
    "VastRateLimitError",
    "VastUnavailableError",
    "VastUncertainError",
    "error_from_response",
    "parse_error_body",
]


class VastError(Exception):
    """Base of every error the Vast client raises.

    ``status`` is the HTTP status (``None`` for transport failures), ``error_code`` the
    machine code from the body (``"no_such_ask"``, ``"auth_error"``...), ``msg`` the human
    text. ``retryable`` tells the client whether an idempotent call may be tried again.
    """

    retryable: bool = False

    def __init__(
        self,
        status: int | None,
        error_code: str | None,
        msg: str,
        *,
        endpoint: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        self.status = status
        self.error_code = error_code
        self.msg = msg
        self.endpoint = endpoint
        if retryable is not None:
            self.retryable = retryable
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = f"vast {self.endpoint}" if self.endpoint else "vast"
        status = f"HTTP {self.status}" if self.status is not None else "no response"
        code = f" {self.error_code}" if self.error_code else ""
        return f"{where}: {status}{code}: {self.msg}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, error_code={self.error_code!r}, "
            f"msg={self.msg!r}, endpoint={self.endpoint!r})"
        )


class VastAuthError(VastError):
    """The key is missing, wrong, expired, or lacks permission (401/403, or 404 "Invalid user key")."""


class VastNotFoundError(VastError):
    """The instance (or other resource) does not exist (404 not_found / no_such_instance / invalid_id)."""


class VastOfferUnavailableError(VastError):
    """The offer is unknown, already rented, or cannot start now (404 no_such_ask, 410)."""


class VastRateLimitError(VastError):
    """429 after the retries ran out, or with a Retry-After too long to wait.

    ``retry_after`` is the server's Retry-After in seconds, when it sent a numeric one.
    """

    def __init__(
        self,
        status: int | None,
        error_code: str | None,
        msg: str,
        *,
        endpoint: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(status, error_code, msg, endpoint=endpoint, retryable=retryable)


class VastQuotaExceededError(VastRateLimitError):
    """The daily search quota (``search_quota_exceeded``); never retried. ``reset_at`` is epoch seconds."""

    def __init__(
        self,
        status: int | None,
        error_code: str | None,
        msg: str,
        *,
        endpoint: str | None = None,
        retry_after: float | None = None,
        reset_at: float | None = None,
    ) -> None:
        self.reset_at = reset_at
        super().__init__(status, error_code, msg, endpoint=endpoint, retryable=False, retry_after=retry_after)


class VastUnavailableError(VastError):
    """Vast did not answer usefully: 5xx, a timeout or a broken connection (after retries)."""


class VastUncertainError(VastError):
    """A create may or may not have happened (5xx, timeout or reset after the request left).

    The caller must reconcile, e.g. by listing instances with the label it sent.
    """

    def __init__(
        self,
        status: int | None,
        error_code: str | None,
        msg: str,
        *,
        endpoint: str | None = None,
        label: str | None = None,
        offer_id: int | None = None,
    ) -> None:
        self.label = label
        self.offer_id = offer_id
        super().__init__(status, error_code, msg, endpoint=endpoint, retryable=False)


class VastBadRequestError(VastError):
    """Vast refused the request's content (400 invalid_args, invalid_price, label_too_long...)."""


class VastInsufficientCreditError(VastError):
    """The account has no money for this (any refusal whose code or text mentions credit)."""


class VastProtocolError(VastError):
    """A success status with a body we cannot understand (not JSON, wrong shape)."""


# Codes (from §7) that mean "this thing does not exist".
_NOT_FOUND_CODES = frozenset({"not_found", "no_such_instance", "invalid_id", "no_such_ssh_key"})
_AUTH_MSGS = ("invalid user key", "session expired", "two factor authentication")


def parse_error_body(body: bytes | str | None) -> tuple[str | None, str, dict[str, Any] | None]:
    """Return ``(error_code, msg, json_object_or_None)`` for any error body shape of §2/§7.

    Handles ``{"success": false, "error", "msg"}``, ``{"detail": ...}``, ``message`` instead of
    ``msg``, JSON that is not an object, and plain text or HTML.
    """
    if body is None:
        return None, "", None
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    stripped = text.strip()
    obj: Any = None
    if stripped[:1] in ("{", "["):
        try:
            obj = json.loads(stripped)
        except ValueError:
            obj = None
    if isinstance(obj, dict):
        code = obj.get("error")
        code = code if isinstance(code, str) and code else None
        msg: Any = obj.get("msg")
        if not msg:
            msg = obj.get("message")
        if not msg:
            msg = obj.get("detail")
        if not msg and code is None and obj.get("error") not in (None, ""):
            msg = obj.get("error")
        if msg is None:
            msg = ""
        if not isinstance(msg, str):
            msg = json.dumps(msg, default=str)
        return code, msg, obj
    # Plain text ("API requests too frequent"), HTML from a gateway, or JSON of another type.
    return None, _shorten(stripped), None


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mentions_credit(code: str | None, msg: str) -> bool:
    hay = f"{code or ''} {msg}".lower()
    return "credit" in hay or "insufficient_balance" in hay or "missing_billing" in hay


def _parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None  # an HTTP date: not honoured (the reference only speaks of numeric values)
    return value if value >= 0 else None


def _parse_reset(headers: Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    raw = headers.get("X-RateLimit-Reset")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def error_from_response(
    status: int,
    body: bytes | str | None,
    headers: Mapping[str, str] | None = None,
    *,
    endpoint: str | None = None,
    offer_context: bool = False,
) -> VastError:
    """Build the typed error for an HTTP answer Vast gave (an error status, or 2xx with success:false).

    ``offer_context`` is true for calls whose path id is an offer (create): there a 404 or 410
    means the offer is gone, not an instance.
    """
    code, msg, _obj = parse_error_body(body)
    low = msg.lower()
    lcode = (code or "").lower()

    if status == 429 or lcode in ("rate_limit_exceeded", "search_quota_exceeded"):
        retry_after = _parse_retry_after(headers)
        if lcode == "search_quota_exceeded":
            return VastQuotaExceededError(
                status,
                code,
                msg or "daily search quota exceeded",
                endpoint=endpoint,
                retry_after=retry_after,
                reset_at=_parse_reset(headers),
            )
        return VastRateLimitError(
            status,
            code or "rate_limited",
            msg or "API requests too frequent",
            endpoint=endpoint,
            retryable=status == 429,
            retry_after=retry_after,
        )
    if status >= 500:
        return VastUnavailableError(
            status,
            code,
            msg or f"server error {status}",
            endpoint=endpoint,
            retryable=status in (502, 503, 504),
        )
    if lcode == "auth_error" or status in (401, 403) or any(m in low for m in _AUTH_MSGS):
        return VastAuthError(status, code, msg or "not authorised", endpoint=endpoint)
    if _mentions_credit(code, msg):
        return VastInsufficientCreditError(status, code, msg, endpoint=endpoint)
    if lcode == "no_such_ask" or "no_such_ask" in low or status == 410 or (offer_context and status == 404):
        return VastOfferUnavailableError(status, code, msg or "offer not available", endpoint=endpoint)
    if status == 404 or lcode in _NOT_FOUND_CODES:
        return VastNotFoundError(status, code, msg or "not found", endpoint=endpoint)
    if 200 <= status < 300:
        # success:false with a code we do not know: the server refused what we asked.
        return VastBadRequestError(status, code, msg or "request refused", endpoint=endpoint)
    if 400 <= status < 500:
        return VastBadRequestError(status, code, msg or f"client error {status}", endpoint=endpoint)
    return VastProtocolError(status, code, msg or f"unexpected status {status}", endpoint=endpoint)
