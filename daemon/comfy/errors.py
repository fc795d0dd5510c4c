"""Typed errors of the ComfyUI client.

Callers catch one of these, never an aiohttp exception:

- `ComfyUnavailableError`: the server cannot be reached or answered 429/5xx
  (connection refused or reset, timeout, truncated body, gateway errors).
  Retrying later may help.
- `ComfyPromptRejected`: `POST /prompt` answered 400 with ComfyUI's
  `{error, node_errors}` body. Its `str()` names every failing node, its class,
  the input and the reason, because the top-level `details` is often empty.
- `ComfyNotFoundError`: a 404 (ComfyUI's 404s usually have an empty body).
- `ComfyHTTPError`: any other unexpected status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "ComfyError",
    "ComfyHTTPError",
    "ComfyNotFoundError",
    "ComfyPromptRejected",
    "ComfyUnavailableError",
    "NodeProblem",
]


class ComfyError(Exception):
    """Base class of every error raised by `socialsync.daemon.comfy`."""


class ComfyUnavailableError(ComfyError):
    """Transport failure, timeout, 429 or 5xx: the server is not answering properly."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class ComfyHTTPError(ComfyError):
    """An unexpected HTTP status; `body` is the (possibly empty) response text."""

    def __init__(self, status: int, body: str = "", *, endpoint: str = "") -> None:
        self.status = status
        self.body = body
        self.endpoint = endpoint
        where = f" from {endpoint}" if endpoint else ""
        snippet = body.strip()[:300]
        super().__init__(f"HTTP {status}{where}" + (f": {snippet}" if snippet else " (empty body)"))


class ComfyNotFoundError(ComfyHTTPError):
    """404, e.g. an unknown model folder or a missing output file."""

    def __init__(self, body: str = "", *, endpoint: str = "") -> None:
        super().__init__(404, body, endpoint=endpoint)


@dataclass(frozen=True, slots=True)
class NodeProblem:
    """One entry of `node_errors[node_id].errors` in a rejected prompt."""

    node_id: str
    class_type: str
    input_name: str | None
    type: str
    message: str
    details: str

    def __str__(self) -> str:
        where = f"node {self.node_id} ({self.class_type})"
        if self.input_name:
            where += f" input {self.input_name}"
        # `details` is the most precise text unless it is just the input name.
        reason = self.details if self.details and self.details != self.input_name else self.message
        return f"{where}: {self.type}: {reason}"


class ComfyPromptRejected(ComfyError):
    """`POST /prompt` answered 400: the graph did not validate."""

    status = 400

    def __init__(
        self,
        error_type: str,
        message: str,
        node_errors: dict[str, Any] | None = None,
        *,
        details: str = "",
        body: dict[str, Any] | None = None,
    ) -> None:
        self.error_type = error_type
        self.message = message
        self.details = details
        self.node_errors: dict[str, Any] = node_errors or {}
        self.body = body or {}
        self.problems: list[NodeProblem] = _problems(self.node_errors)
        super().__init__(self._describe())

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ComfyPromptRejected:
        err = body.get("error")
        if isinstance(err, dict):
            error_type = str(err.get("type") or "unknown")
            message = str(err.get("message") or "")
            details = str(err.get("details") or "")
        else:  # some proxies or old versions put a plain string here
            error_type, message, details = "unknown", str(err or ""), ""
        node_errors = body.get("node_errors")
        return cls(
            error_type,
            message,
            node_errors if isinstance(node_errors, dict) else {},
            details=details,
            body=body,
        )

    def _describe(self) -> str:
        head = f"prompt rejected ({self.error_type})"
        if self.message:
            head += f": {self.message}"
        if self.problems:
            return head + "; " + "; ".join(str(p) for p in self.problems)
        if self.details:
            return f"{head} ({self.details})"
        return head


def _problems(node_errors: dict[str, Any]) -> list[NodeProblem]:
    out: list[NodeProblem] = []
    for node_id, entry in node_errors.items():
        if not isinstance(entry, dict):
            continue
        class_type = str(entry.get("class_type") or "?")
        for err in entry.get("errors") or []:
            if not isinstance(err, dict):
                continue
            extra = err.get("extra_info") if isinstance(err.get("extra_info"), dict) else {}
            input_name = extra.get("input_name")
            out.append(
                NodeProblem(
                    node_id=str(node_id),
                    class_type=class_type,
                    input_name=str(input_name) if input_name is not None else None,
                    type=str(err.get("type") or "unknown"),
                    message=str(err.get("message") or ""),
                    details=str(err.get("details") or ""),
                )
            )
    return out
