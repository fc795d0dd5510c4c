"""Wire models of the fleet: the seed's server object and the requests that change it."""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator

from socialsync.common.wire import QueryModel, RequestModel, WireModel


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
    comfy_auth: str | None = Field(default=None, description="'basic' or 'bearer' when the daemon sends this "
                                   "server's ComfyUI credentials of its own (never shown)")
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime


class ComfyAuth(RequestModel):
    """Credentials for one server's ComfyUI, when it sits behind an authenticating proxy:
    ``username`` and ``password`` (basic) or ``token`` (bearer). ``{}`` removes them (the
    settings' ``comfy`` credentials, if any, apply again). Stored by the daemon, never
    shown, logged or audited."""

    username: str | None = Field(default=None, min_length=1, max_length=200)
    password: SecretStr | None = Field(default=None, max_length=500)
    token: SecretStr | None = Field(default=None, min_length=1, max_length=2000)

    @model_validator(mode="after")
    def _one_kind(self) -> ComfyAuth:
        if self.token is not None and (self.username is not None or self.password is not None):
            raise ValueError("give username and password, or a token, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self

    @staticmethod
    def credentials(stored: str | None) -> tuple[tuple[str, str] | None, str | None]:
        """(basic (user, password), bearer token) from the stored JSON; (None, None) if none."""
        if not stored:
            return None, None
        creds = json.loads(stored)
        if "token" in creds:
            return None, creds["token"]
        return (creds["username"], creds["password"]), None

    @staticmethod
    def kind(stored: str | None) -> str | None:
        """What a response may show of the stored credentials: 'basic', 'bearer' or None."""
        basic, token = ComfyAuth.credentials(stored)
        return "bearer" if token is not None else "basic" if basic is not None else None

    def stored(self) -> str | None:
        """The column's JSON; None when empty."""
        if self.token is not None:
            return json.dumps({"token": self.token.get_secret_value()})
        if self.username is not None and self.password is not None:
            return json.dumps({"username": self.username, "password": self.password.get_secret_value()})
        return None


class ServerCreate(RequestModel):
    """Seed: ``{"offerId": "12345", "image": "...", "onStartScript": "..."}``."""

    offer_id: int | str = Field(description="The Vast offer to rent: a positive integer, or its digits as a string")
    image: str | None = Field(default=None, max_length=1024, description="Docker image; default from settings")
    on_start_script: str | None = Field(default=None, max_length=4000)
    name: str | None = Field(default=None, min_length=1, max_length=100)
    disk: float | None = Field(default=None, ge=8, le=4096, description="GB")
    env: dict[str, str] | None = None
    comfy_auth: ComfyAuth | None = Field(default=None, description="if the image puts ComfyUI behind a proxy "
                                         "that wants credentials")

    @field_validator("offer_id", mode="before")
    @classmethod
    def _positive_offer_id(cls, value: Any) -> Any:
        # Vast offer ids are positive integers; a bool, 0 or "abc" must be a 400, not a 500
        # from the Vast client's own check.
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError("offerId must be a positive integer")
        text = str(value).strip()
        if not text.isdigit() or int(text) <= 0:
            raise ValueError("offerId must be a positive integer")
        return value


class ServerLaunched(WireModel):
    id: int
    vast_id: str | None
    status: ServerStatus
    message: str


class ServerUpdate(RequestModel):
    """Seed: ``{"setupStatus": "ready", "metadata": {...}}``; metadata is merged, not replaced."""

    setup_status: SetupStatus | None = None
    metadata: dict[str, Any] | None = None
    name: str | None = Field(default=None, min_length=1, max_length=100)
    status: ServerStatus | None = Field(default=None, description="'stopped' or 'running' only")
    comfy_auth: ComfyAuth | None = Field(default=None, description="replace this server's ComfyUI credentials; "
                                         "{} removes them")


class ServerAttach(RequestModel):
    name: str = Field(min_length=1, max_length=100)
    comfy_url: str = Field(min_length=8, max_length=500, description="http(s)://host:port of ComfyUI")
    comfy_auth: ComfyAuth | None = None


class ServerListQuery(QueryModel):
    include: str | None = Field(default=None, description="'destroyed' to list destroyed servers too")


class StatusChange(WireModel):
    at: datetime
    status: ServerStatus
    setup_status: SetupStatus
    reason: str | None = None


class Offer(WireModel):
    offer_id: str
    gpu: str | None = None
    gpu_count: int | None = None
    gpu_ram: float | None = Field(default=None, description="GB per GPU")
    cpu_cores: float | None = None
    ram: float | None = Field(default=None, description="GB")
    disk: float | None = Field(default=None, description="GB available")
    price_per_hour: str = Field(examples=["0.50"])
    price_per_day: str
    location: str | None = None
    country: str | None = None
    reliability: float | None = None
    verified: bool | None = None
    direct_ports: int | None = None
    internet_down: float | None = Field(default=None, description="Mbps")
    internet_up: float | None = Field(default=None, description="Mbps")
    dlperf: float | None = None
    cuda: float | None = None


class OfferQuery(QueryModel):
    gpu_name: str | None = Field(default=None, max_length=100)
    min_gpus: int | None = Field(default=None, ge=1, le=64)
    max_gpus: int | None = Field(default=None, ge=1, le=64)
    min_gpu_ram: float | None = Field(default=None, ge=0, description="GB per GPU")
    max_price: float | None = Field(default=None, gt=0, description="$/h")
    min_reliability: float | None = Field(default=None, ge=0, le=1)
    region: str | None = Field(default=None, description="north-america, europe, asia-pacific, …")
    country: str | None = Field(default=None, min_length=2, max_length=2)
    min_disk: float | None = Field(default=None, ge=0, description="GB")
    order: str | None = Field(default=None, description="price | -price | reliability | -reliability | gpu_ram | dlperf | score")
    limit: int = Field(default=50, ge=1, le=500)


class MessageResponse(WireModel):
    success: bool = True
    message: str
