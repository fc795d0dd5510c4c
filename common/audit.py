"""Wire models of the audit log."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from socialsync.common.wire import QueryModel, WireModel


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    DENIED = "denied"


class AuditEntry(WireModel):
    id: int
    at: datetime
    actor: str
    action: str
    target_type: str | None = None
    target_id: str | None = None
    outcome: Outcome
    client_addr: str | None = None
    request_id: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class AuditQuery(QueryModel):
    action: str | None = None
    actor: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    outcome: Outcome | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0)
