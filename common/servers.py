"""Wire models of the fleet: the seed's server object and the requests that change it."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from socialsync.common.wire import WireModel


class ServerStatus(StrEnum):
    LAUNCHING = "launching"
    LOADING = "loading"
    RUNNING = "running"
    STOPPED = "stopped"
    ERROR = "error"
    OFFLINE = "offline"
    DESTROYED = "destroyed"


class SetupStatus(StrEnum):
    PENDING = "pending"
    INSTALLING = "installing"
    READY = "ready"
    FAILED = "failed"


class Server(WireModel):
    """The seed's server object; money is a decimal string, sizes in GB."""

    id: int
    vast_id: str | None = None
    name: str
    gpu: str | None = None
    gpu_count: int | None = None
    cpu_cores: int | None = None
    ram: int | None = Field(default=None, description="GB")
    disk: int | None = Field(default=None, description="GB")
    price_per_hour: str | None = Field(default=None, examples=["0.50"])
    location: str | None = None
    status: ServerStatus
    setup_status: SetupStatus
    status_message: str | None = None
    server_url: str | None = None
    ssh_connection: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
