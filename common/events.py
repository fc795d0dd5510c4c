"""Event envelopes and the data of each event type, as sent on /ws and ZeroMQ."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from socialsync.common.servers import ServerStatus, SetupStatus
from socialsync.common.wire import WireModel

SERVER_STATUS = "server_status"
GENERATION_PROGRESS = "generation_progress"
GENERATION_COMPLETED = "generation_completed"
GENERATION_FAILED = "generation_failed"
MODEL_DOWNLOAD = "model_download"
AUDIT = "audit"
LOG = "log"


class Envelope(WireModel):
    type: str
    data: dict[str, Any]
    seq: int
    ts: str


class ServerStatusData(WireModel):
    """Seed: ``{"serverId": 1, "status": "running", "setupStatus": "ready"}``."""

    server_id: int
    status: ServerStatus
    setup_status: SetupStatus
    reason: str | None = None


class GenerationProgressData(WireModel):
    """Seed: ``{"generationId": 123, "progress": 75, "status": "processing"}``."""

    generation_id: int
    progress: int = Field(ge=0, le=100)
    status: str
    server_id: int | None = None
    step: int | None = None
    steps: int | None = None


class LogData(WireModel):
    level: str
    message: str
    server_id: int | None = None
