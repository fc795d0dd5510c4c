"""Tolerant models of what Vast returns: offers, instances, the current user.

Every field is optional, unknown keys are ignored, and a value of the wrong type becomes
``None`` instead of failing the whole row (Vast adds, renames and nulls fields freely).
Reference: ``vast-api.md`` §5 (instance), §6 (offer), §4.11 (user).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

__all__ = ["CreateResult", "DestroyOutcome", "Instance", "ListResult", "Offer", "PortBinding", "User"]

log = logging.getLogger(__name__)


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=False, populate_by_name=True)

    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def parse(cls, data: Any) -> Self:
        """Validate ``data``; fields whose value does not fit are dropped (become ``None``)."""
        if not isinstance(data, dict):
            return cls()
        clean = dict(data)
        for _ in range(5):
            try:
                obj = cls.model_validate(clean)
                break
            except ValidationError as exc:
                bad = {err["loc"][0] for err in exc.errors() if err.get("loc")}
                bad &= set(clean)
                if not bad:
                    raise
                log.debug("vast model=%s dropped_fields=%s", cls.__name__, ",".join(map(str, sorted(bad))))
                for key in bad:
                    clean.pop(key, None)
        else:  # pragma: no cover - five rounds of bad fields would be remarkable
            obj = cls()
        obj._raw = cls._keep_raw(data)
        return obj

    @classmethod
    def _keep_raw(cls, data: dict[str, Any]) -> dict[str, Any]:
        return dict(data)

    @property
    def raw(self) -> dict[str, Any]:
        """The row as Vast sent it (for fields this model does not name)."""
        return self._raw


class Offer(_Tolerant):
    """One offer (bundle) from ``POST /api/v0/bundles/``. ``id`` is what create takes."""

    id: int | None = None
    ask_contract_id: int | None = None
    bundle_id: int | None = None
    machine_id: int | None = None
    host_id: int | None = None
    num_gpus: int | None = None
    gpu_name: str | None = None
    gpu_ram: float | None = None  # MB per GPU
    gpu_total_ram: float | None = None  # MB
    gpu_arch: str | None = None
    compute_cap: int | None = None
    cuda_max_good: float | None = None
    driver_version: str | None = None
    cpu_name: str | None = None
    cpu_cores: int | None = None
    cpu_cores_effective: float | None = None
    cpu_ram: float | None = None  # MB
    disk_space: float | None = None  # GB available
    disk_bw: float | None = None
    inet_up: float | None = None
    inet_down: float | None = None
    inet_up_cost: float | None = None
    inet_down_cost: float | None = None
    direct_port_count: int | None = None
    dph_base: float | None = None
    dph_total: float | None = None
    discounted_dph_total: float | None = None
    min_bid: float | None = None
    is_bid: bool | None = None
    storage_cost: float | None = None  # $/GB/month
    dlperf: float | None = None
    dlperf_per_dphtotal: float | None = None
    total_flops: float | None = None
    score: float | None = None
    reliability: float | None = None
    reliability2: float | None = None
    verification: str | None = None
    rentable: bool | None = None
    rented: bool | None = None
    external: bool | None = None
    hosting_type: int | None = None
    static_ip: bool | None = None
    public_ipaddr: str | None = None
    geolocation: str | None = None
    duration: float | None = None  # seconds of rental time available
    start_date: float | None = None
    end_date: float | None = None

    @property
    def country_code(self) -> str | None:
        """The two-letter code at the end of ``geolocation`` ("Washington, US" → "US")."""
        geo = (self.geolocation or "").strip()
        return geo[-2:].upper() if len(geo) >= 2 and geo[-2:].isalpha() else None


class PortBinding(BaseModel):
    """One Docker port binding: ``{"HostIp": "0.0.0.0", "HostPort": "41234"}`` (the port is a string)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    host_ip: str | None = Field(default=None, alias="HostIp")
    host_port: str | int | None = Field(default=None, alias="HostPort")


class Instance(_Tolerant):
    """One instance row (v1 list / v0 show). ``id`` is the instance (contract) id."""

    id: int | None = None
    machine_id: int | None = None
    host_id: int | None = None
    bundle_id: int | None = None
    label: str | None = None
    image_uuid: str | None = None
    image_runtype: str | None = None
    image_args: list[str] | None = None
    extra_env: list[list[Any]] | dict[str, Any] | None = None
    onstart: str | None = None
    actual_status: str | None = None
    intended_status: str | None = None
    cur_state: str | None = None
    next_state: str | None = None
    status_msg: str | None = None
    num_gpus: int | None = None
    gpu_name: str | None = None
    gpu_ram: float | None = None
    gpu_totalram: float | None = None
    gpu_util: float | None = None
    gpu_temp: float | None = None
    cpu_name: str | None = None
    cpu_cores: int | None = None
    cpu_cores_effective: float | None = None
    cpu_ram: float | None = None
    cpu_util: float | None = None
    mem_usage: float | None = None
    mem_limit: float | None = None
    disk_space: float | None = None
    disk_usage: float | None = None
    disk_util: float | None = None
    inet_up: float | None = None
    inet_down: float | None = None
    dph_total: float | None = None
    dph_base: float | None = None
    storage_cost: float | None = None
    storage_total_cost: float | None = None
    is_bid: bool | None = None
    min_bid: float | None = None
    public_ipaddr: str | None = None
    local_ipaddrs: str | None = None
    static_ip: bool | None = None
    ports: dict[str, list[PortBinding] | None] | None = None
    direct_port_start: int | None = None
    direct_port_end: int | None = None
    direct_port_count: int | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    ssh_idx: str | int | None = None
    geolocation: str | None = None
    country_code: str | None = None
    verification: str | None = None
    reliability2: float | None = None
    start_date: float | None = None
    end_date: float | None = None
    duration: float | None = None
    uptime_mins: float | None = None
    driver_version: str | None = None
    cuda_max_good: float | None = None
    template_id: int | None = None
    template_hash_id: str | None = None
    template_name: str | None = None

    def host_port(self, internal: int, proto: str = "tcp") -> int | None:
        """The public port Docker mapped ``internal/proto`` to, or ``None`` (not running / not mapped)."""
        bindings = (self.ports or {}).get(f"{internal}/{proto}") or []
        for binding in bindings:
            try:
                port = int(str(binding.host_port))
            except (TypeError, ValueError):
                continue
            if 0 < port <= 65535:  # anything else is no port a client could connect to
                return port
        return None

    def public_endpoint(self, internal: int, proto: str = "tcp") -> tuple[str, int] | None:
        """``(public_ipaddr, host_port)`` for an app port such as 8188, when both are known."""
        port = self.host_port(internal, proto)
        ip = (self.public_ipaddr or "").strip()
        return (ip, port) if ip and port else None

    def ssh_endpoint(self) -> tuple[str, int] | None:
        """Direct SSH (``22/tcp`` on the public IP) when mapped, else the proxy ``ssh_host:ssh_port``."""
        direct = self.public_endpoint(22)
        if direct:
            return direct
        if self.ssh_host and self.ssh_port:
            return (self.ssh_host, int(self.ssh_port))
        return None

    @property
    def env(self) -> dict[str, str]:
        """``extra_env`` as a dict (Vast sends a list of ``[key, value]`` pairs)."""
        if isinstance(self.extra_env, dict):
            return {str(k): str(v) for k, v in self.extra_env.items()}
        out: dict[str, str] = {}
        for pair in self.extra_env or []:
            if isinstance(pair, list | tuple) and len(pair) == 2:
                out[str(pair[0])] = str(pair[1])
        return out


_USER_SECRETS = frozenset({"api_key", "sid", "key_id", "session_key"})


class User(_Tolerant):
    """The account behind the key. ``credit`` is the spendable money in dollars.

    The ``api_key`` (and session ids) Vast includes in this answer are never kept.
    """

    id: int | None = None
    email: str | None = None
    username: str | None = None
    fullname: str | None = None
    credit: float | None = None
    balance: float | None = None
    balance_threshold: float | None = None
    balance_threshold_enabled: bool | None = None
    can_pay: bool | None = None
    email_verified: bool | None = None
    has_billing: bool | None = None
    billing_creditonly: bool | None = None
    ssh_key: str | None = None

    @classmethod
    def _keep_raw(cls, data: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in data.items() if k not in _USER_SECRETS}


class DestroyOutcome(StrEnum):
    """What ``destroy_instance`` found. Both values mean the instance is gone now."""

    DESTROYED = "destroyed"
    ALREADY_GONE = "already_gone"


@dataclass(frozen=True, slots=True)
class CreateResult:
    """What a successful create returned. ``instance_api_key`` is the container's scoped key (secret)."""

    instance_id: int
    instance_api_key: str | None = field(default=None, repr=False)


@dataclass(slots=True)
class ListResult:
    """All instances matching a list call, and how many HTTP pages (calls) it took."""

    instances: list[Instance]
    pages: int
    total: int | None = None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.instances)

    def __len__(self) -> int:
        return len(self.instances)
