"""Wire models of the scheduler: ``POST /api/generate`` (the fleet-wide queue),
``GET /api/queue`` and ``GET /api/webhooks/deliveries``."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from socialsync.common.generations import GenerateRequest
from socialsync.common.wire import QueryModel, WireModel

WEBHOOK_EVENTS = ("generation.completed", "generation.failed")
SIGNATURE_HEADER = "X-SocialSync-Signature"  # "sha256=" + hex HMAC-SHA256 of "<timestamp>.<body>"
TIMESTAMP_HEADER = "X-SocialSync-Timestamp"  # unix seconds, also inside the signed text
EVENT_HEADER = "X-SocialSync-Event"
DELIVERY_HEADER = "X-SocialSync-Delivery"


class QueuedGenerateRequest(GenerateRequest):
    """The per-server generate body, plus where and how it may run."""

    priority: int = Field(default=0, ge=-100, le=100, description="higher first, within one principal")
    required_models: list[str] = Field(default_factory=list, max_length=16,
                                       description="model file names every candidate server must have")
    webhook_url: str | None = Field(default=None, max_length=2048,
                                    description="generation.completed / generation.failed are POSTed here")


class QueuedResponse(WireModel):
    success: bool = True
    generation_id: int
    status: str = "queued"
    position: int = Field(description="1 = next to be dispatched")
    message: str = "Generation queued"
    estimated_time: str


class QueueItem(WireModel):
    generation_id: int
    principal: str | None
    priority: int
    status: str = Field(description="queued (waiting), or queued/processing on a server")
    server_id: int | None = None
    position: int | None = Field(default=None, description="dispatch order of waiting items, 1 = next")
    attempts: int = 0
    checkpoint: str | None = None
    required_models: list[str] = Field(default_factory=list)
    created_at: datetime
    estimated_start: datetime | None = None
    waiting_for: str | None = Field(default=None, description="why it cannot be dispatched now")


class QueueView(WireModel):
    waiting: int
    running: int
    servers: int = Field(description="ready servers")
    slots: int = Field(description="free dispatch slots now")
    per_server_concurrency: int
    items: list[QueueItem]


class QueueQuery(QueryModel):
    limit: int = Field(default=200, ge=1, le=5000)


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class DeliveryAttempt(WireModel):
    at: datetime
    status: int | None = Field(default=None, description="the receiver's HTTP status")
    error: str | None = None
    duration_ms: int | None = None


class WebhookDelivery(WireModel):
    id: int
    generation_id: int | None
    event: str
    url: str
    status: DeliveryStatus
    attempts: int
    attempt_log: list[DeliveryAttempt]
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    payload: dict[str, Any] | None = None


class DeliveryQuery(QueryModel):
    status: DeliveryStatus | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    before_id: int | None = Field(default=None, ge=1)
