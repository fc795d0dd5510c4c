"""A local Vast.ai: a real aiohttp server on loopback that speaks the real REST API.

Built from ``reference/vast-api.md`` §8 (what a faithful fake must emulate): v0/v1 routes
with or without the trailing slash, Bearer or ``?api_key=`` auth, an offer catalogue with
Vast's query language, creates with Vast's validation and error bodies, the paged v1
instance list, an instance state machine driven by a controllable clock (no real sleeps in
tests), billing, two-step logs, and fault injection (429 in every style, 5xx bursts,
connection resets, slow answers, 200 with ``success: false``, per-endpoint rate limits).

Tests drive it through its Python API::

    clock = ManualClock()
    async with VastSim(api_key="k", clock=clock, boot_seconds=30) as sim:
        client = VastClient("k", base_url=sim.base_url, pacing={})
        ...
        clock.advance(30)          # the instance is running on the next request

Run on its own: ``python -m socialsync.daemon.sim.vast [--host H] [--port P] [--api-key KEY]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import logging
import math
import random
import re
import secrets
import shlex
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from socialsync.daemon.sim.clock import Clock, ManualClock

__all__ = [
    "CallbackProvider",
    "Clock",
    "ManualClock",
    "SimInstance",
    "SimRequest",
    "VastSim",
    "default_catalog",
    "demo_catalog",
    "main",
    "search_offers",
]

log = logging.getLogger(__name__)

JSON = "application/json"
#: An onstart script with this marker runs the daemon's dead-man loop (see
#: ``daemon/services/deadman.py``); the sim emulates that loop on every tick.
DEADMAN_MARKER = "# socialsync-deadman"

# ---------------------------------------------------------------------------- catalogue

#: name, MB per GPU, compute capability, $/h per GPU, DLPerf per GPU, TFLOPS per GPU, mem bw GB/s
_GPUS: tuple[tuple[str, int, int, float, float, float, float], ...] = (
    ("RTX 4090", 24564, 890, 0.34, 26.1, 82.6, 1008.0),
    ("RTX 3090", 24576, 860, 0.19, 14.6, 35.6, 936.0),
    ("RTX A5000", 24564, 860, 0.23, 13.2, 27.8, 768.0),
    ("A100 SXM4", 81920, 800, 1.05, 33.5, 19.5, 2039.0),
    ("H100 SXM", 81559, 900, 2.15, 61.0, 66.9, 3352.0),
)
_PLACES = (
    "Washington, US",
    "Oregon, US",
    "Texas, US",
    "Quebec, CA",
    "Frankfurt, DE",
    "Helsinki, FI",
    "Warsaw, PL",
    "Amsterdam, NL",
    "Tokyo, JP",
    "Sydney, AU",
    "Sao Paulo, BR",
    "Seoul, KR",
)
_CPUS = (
    "AMD EPYC 7543 32-Core Processor",
    "AMD Ryzen 9 7950X 16-Core Processor",
    "Intel Xeon Gold 6338 CPU @ 2.00GHz",
    "AMD EPYC 9354 32-Core Processor",
)
_EPOCH_2026 = 1_767_225_600.0


def default_catalog(n: int = 40, *, seed: int = 7, now: float = _EPOCH_2026) -> list[dict[str, Any]]:
    """``n`` realistic offers (RTX 4090/3090/A5000, A100, H100; 1-8 GPUs), deterministic per ``seed``.

    Most are verified, rentable and unrented; a few are unverified, external or rented so the
    client's default filters have something to remove.
    """
    rng = random.Random(seed)
    offers: list[dict[str, Any]] = []
    for i in range(n):
        name, vram, cc, price, dlperf, tflops, bw = (
            _GPUS[i % len(_GPUS)] if i < len(_GPUS) else rng.choice(_GPUS)
        )
        num = rng.choice((1, 1, 1, 2, 2, 4, 8)) if i >= len(_GPUS) else 1
        if name.startswith(("A100", "H100")) and num == 1 and rng.random() < 0.5:
            num = 8
        offer_id = 5_100_000 + i * 131 + rng.randint(0, 97)
        machine_id = 10_000 + i * 7
        port_start = 10_000 + (i % 50) * 1_000  # host ranges stay inside 1..65535 for any catalog size
        port_count = rng.choice((0, 20, 100, 500)) if i % 9 == 8 else rng.choice((100, 200, 500))
        dph_base = round(price * num * rng.uniform(0.85, 1.3), 4)
        reliability = round(rng.uniform(0.90, 0.9995), 4)
        duration = rng.uniform(3, 120) * 86400
        geo = _PLACES[(i * 5 + rng.randint(0, 3)) % len(_PLACES)]
        offers.append(
            {
                "id": offer_id,
                "ask_contract_id": offer_id,
                "bundle_id": 900_000 + i,
                "bundled_results": None,
                "machine_id": machine_id,
                "host_id": 1_000 + i % 13,
                "num_gpus": num,
                "gpu_name": name,
                "gpu_ram": vram,
                "gpu_total_ram": vram * num,
                "gpu_frac": 1.0,
                "gpu_arch": "nvidia",
                "gpu_ids": list(range(num)),
                "gpu_lanes": 16,
                "gpu_mem_bw": bw,
                "gpu_max_power": 450 if "RTX" in name else 700,
                "gpu_max_temp": 90,
                "gpu_display_active": False,
                "compute_cap": cc,
                "cuda_max_good": 12.4,
                "driver_version": "550.54.15",
                "driver_vers": 550054015,
                "bw_nvlink": 600.0 if name.startswith(("A100", "H100")) and num > 1 else 0.0,
                "cpu_name": rng.choice(_CPUS),
                "cpu_arch": "amd64",
                "cpu_cores": 64,
                "cpu_cores_effective": float(8 * num),
                "cpu_ghz": round(rng.uniform(2.0, 4.5), 1),
                "cpu_ram": 32_000 * num,
                "disk_space": float(rng.choice((64, 128, 256, 512, 1024))),
                "disk_bw": round(rng.uniform(800, 6000), 1),
                "disk_name": "Samsung SSD 990 PRO 2TB",
                "inet_up": round(rng.uniform(100, 2000), 1),
                "inet_down": round(rng.uniform(200, 5000), 1),
                "inet_up_cost": 0.003,
                "inet_down_cost": 0.002,
                "direct_port_count": port_count,
                "direct_port_start": port_start if port_count else -1,
                "direct_port_end": port_start + port_count - 1 if port_count else -1,
                "pci_gen": 4.0,
                "pcie_bw": 24.6,
                "mobo_name": "ROMED8-2T",
                "os_version": "22.04",
                "has_avx": 1,
                "dph_base": dph_base,
                "min_bid": round(dph_base * 0.45, 4),
                "is_bid": False,
                "storage_cost": 0.15,
                "reserved_discount": 0.25,
                "credit_discount_max": 0.4,
                "dlperf": round(dlperf * num, 2),
                "total_flops": round(tflops * num, 2),
                "score": 0.0,
                "reliability": reliability,
                "reliability2": reliability,
                "reliability_mult": 1.0,
                "verification": "unverified" if i % 7 == 6 else "verified",
                "vericode": 0 if i % 7 == 6 else 1,
                "rentable": True,
                "rented": i % 13 == 12,
                "external": i % 11 == 10,
                "hosting_type": 1 if i % 4 == 0 else 0,
                "static_ip": i % 3 == 0,
                "vms_enabled": False,
                "public_ipaddr": "127.0.0.1",
                "geolocation": geo,
                "geolocode": 1000 + (i % len(_PLACES)),
                "start_date": now - rng.uniform(1, 90) * 86400,
                "end_date": now + duration,
                "duration": duration,
                "resource_type": "gpu",
                "logo": "/static/logos/vastai_small2.png",
                "webpage": None,
            }
        )
    return offers


def demo_catalog() -> list[dict[str, Any]]:
    """A small fixed catalogue for ``--demo`` mode."""
    return default_catalog(24, seed=42)


# ---------------------------------------------------------------------------- query engine

_OFFER_ALIASES = {
    "dph": "dph_total",
    "cuda_vers": "cuda_max_good",
    "dlperf_usd": "dlperf_per_dphtotal",
    "flops_usd": "flops_per_dphtotal",
    "display_active": "gpu_display_active",
    "ubuntu_version": "os_version",
}
_RESERVED = frozenset(
    {
        "order",
        "type",
        "limit",
        "allocated_storage",
        "target_reliability",
        "extra_ids",
        "gpu_option",
        "show_incompatible",
        "sort_option",
        "template_id",
        "disable_bundling",
        "select_cols",
    }
)
_WILDCARDS = frozenset({"any", "?", "*"})
_OPS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "in", "notin", "nin"})
_NUMERIC = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


class QueryError(ValueError):
    """A query Vast would refuse with 400 ``invalid_request``."""


def _norm(value: Any) -> Any:
    """Coerce like Vast must: numeric strings to numbers, "true"/"false"/"null" to JSON values."""
    if isinstance(value, str):
        s = value.strip()
        low = s.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        if _NUMERIC.match(s):
            return float(s)
        return s.replace("_", " ").lower()
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    return value


def _cmp_value(column: str, raw: Any, target: Any) -> Any:
    """The row value to compare with ``target`` (2-letter targets match geolocation's country)."""
    value = _norm(raw)
    if column == "geolocation" and isinstance(target, str) and len(target) == 2 and isinstance(raw, str):
        return raw.strip()[-2:].lower()
    return value


def _match(column: str, raw: Any, op: str, target: Any) -> bool:
    if op == "nin":
        op = "notin"
    if op in ("in", "notin"):
        items = target if isinstance(target, list) else [target]
        normed = [_norm(t) for t in items]
        hit = any(_cmp_value(column, raw, t) == t for t in normed)
        return hit if op == "in" else not hit
    t = _norm(target)
    v = _cmp_value(column, raw, t)
    if op == "eq":
        return v == t
    if op == "neq":
        return v != t
    if v is None or t is None or isinstance(v, str) != isinstance(t, str):
        return False
    try:
        if op == "gt":
            return v > t
        if op == "gte":
            return v >= t
        if op == "lt":
            return v < t
        if op == "lte":
            return v <= t
    except TypeError:
        return False
    raise QueryError(f"unknown operator {op}")


def filter_rows(
    rows: Iterable[dict[str, Any]], filters: Mapping[str, Any], *, allowed: Callable[[str], bool]
) -> list[dict[str, Any]]:
    """Keep the rows that pass every ``{column: {op: value}}`` filter (``any`` is a wildcard)."""
    checks: list[tuple[str, str, Any]] = []
    for column, spec in filters.items():
        if not allowed(column):
            raise QueryError(f"Error in query parameters: {column} is not a valid search key")
        if not isinstance(spec, dict):
            spec = {"eq": spec}
        for op, target in spec.items():
            if op not in _OPS:
                raise QueryError(f"Error in query parameters: unknown operator {op!r} for {column}")
            if isinstance(target, str) and target.strip().lower() in _WILDCARDS:
                continue
            checks.append((column, op, target))
    return [row for row in rows if all(_match(c, row.get(c), op, t) for c, op, t in checks)]


class _Rev:
    """Inverts the ordering of a value (for descending sort keys)."""

    __slots__ = ("v",)

    def __init__(self, v: Any) -> None:
        self.v = v

    def __lt__(self, other: _Rev) -> bool:
        return other.v < self.v

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Rev) and self.v == other.v

    def __hash__(self) -> int:  # pragma: no cover - not hashed, defined for consistency
        return hash(self.v)


def _key_part(value: Any, desc: bool) -> tuple[int, Any]:
    """Sortable key part; nulls last in either direction."""
    if value is None:
        return (1, (9, 0))
    if isinstance(value, bool):
        value = int(value)
    part = (0, float(value)) if isinstance(value, int | float) else (1, str(value))
    return (0, _Rev(part) if desc else part)


def _sort_rows(rows: list[dict[str, Any]], order: list[tuple[str, bool]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: tuple(_key_part(r.get(c), d) for c, d in order))


def _price(offer: dict[str, Any], kind: str, storage_gb: float) -> dict[str, Any]:
    """The offer as search returns it for a rental ``kind`` and ``allocated_storage``."""
    o = dict(offer)
    o.pop("reserved_discount", None)
    storage_dph = float(offer.get("storage_cost") or 0.0) * storage_gb / (30 * 24)
    base = float(offer.get("dph_base") or 0.0)
    discounted = base * (1 - float(offer.get("reserved_discount") or 0.0)) + storage_dph
    if kind == "bid":
        base = float(offer.get("min_bid") or base)
        o["is_bid"] = True
    elif kind == "reserved":
        base = base * (1 - float(offer.get("reserved_discount") or 0.0))
    total = round(base + storage_dph, 6)
    o["dph_total"] = total
    o["dph_total_adj"] = total
    o["discounted_dph_total"] = round(discounted, 6)
    o["storage_total_cost"] = round(storage_dph, 6)
    o["vram_costperhour"] = round(total / max(1.0, float(o.get("gpu_total_ram") or 1) / 1000), 6)
    o["dlperf_per_dphtotal"] = round(float(o.get("dlperf") or 0) / total, 4) if total else 0.0
    o["flops_per_dphtotal"] = round(float(o.get("total_flops") or 0) / total, 4) if total else 0.0
    o["score"] = round(o["dlperf_per_dphtotal"] * float(o.get("reliability") or 0), 4)
    o["verified"] = o.get("verification") == "verified"
    o["datacenter"] = o.get("hosting_type") == 1
    o["search"] = {
        "gpuCostPerHour": round(base, 6),
        "diskHour": round(storage_dph, 6),
        "totalHour": total,
        "discountTotalHour": 0.0,
        "discountedTotalPerHour": total,
    }
    o["instance"] = dict(o["search"])
    return o


def search_offers(offers: Iterable[dict[str, Any]], body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Run a bundles query (§4.1) over catalogue rows; raises ``QueryError`` for a bad query."""
    kind = str(body.get("type") or "on-demand").lower()
    if kind in ("on-demand", "ondemand", "on_demand"):
        kind = "on-demand"
    elif kind == "interruptible":
        kind = "bid"
    if kind not in ("on-demand", "bid", "reserved"):
        raise QueryError(f"invalid type {kind!r}")
    try:
        storage = float(
            body.get("allocated_storage", 8.0) if body.get("allocated_storage") is not None else 8.0
        )
    except (TypeError, ValueError):
        raise QueryError("allocated_storage must be a number") from None
    priced = [_price(o, kind, storage) for o in offers if float(o.get("disk_space") or 0) >= storage]
    columns = set().union(*(p.keys() for p in priced)) if priced else set()
    filters: dict[str, Any] = {}
    for key, spec in body.items():
        if key in _RESERVED:
            continue
        filters[_OFFER_ALIASES.get(key, key)] = spec
    rows = filter_rows(priced, filters, allowed=lambda c: c in columns or not priced)
    order_spec = body.get("order") if body.get("order") is not None else [["score", "desc"]]
    order: list[tuple[str, bool]] = []
    if not isinstance(order_spec, list):
        raise QueryError("order must be a list of [field, direction] pairs")
    for item in order_spec:
        if isinstance(item, str):
            name, desc = (item[1:], True) if item.startswith("-") else (item, False)
        elif isinstance(item, list | tuple) and item:
            name = str(item[0])
            direction = str(item[1]).lower() if len(item) > 1 else "asc"
            if direction not in ("asc", "desc"):
                raise QueryError(f"invalid sort direction {direction!r}")
            desc = direction == "desc"
        else:
            raise QueryError("order must be a list of [field, direction] pairs")
        order.append((_OFFER_ALIASES.get(name, name), desc))
    rows = _sort_rows(rows, order)
    limit = body.get("limit")
    if limit is not None:
        try:
            lim = int(float(limit))
        except (TypeError, ValueError):
            raise QueryError("limit must be an integer") from None
        rows = rows[: max(0, lim)]
    return rows


# ---------------------------------------------------------------------------- records


@dataclass
class SimRequest:
    """One request as the sim saw it (``time`` is sim-clock time, ``mono`` real monotonic time)."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    body: str
    headers: dict[str, str]
    time: float
    mono: float
    endpoint: str | None = None
    status: int | None = None
    reset: bool = False

    @property
    def user_agent(self) -> str | None:
        return self.headers.get("User-Agent")


@dataclass
class CallbackProvider:
    """Wraps two plain callables as a provider (``comfy_provider``/``ssh_provider``)."""

    on_running_cb: Callable[[dict[str, Any]], Awaitable[int]]
    on_gone_cb: Callable[[int], Awaitable[None]] | None = None

    async def on_running(self, instance: dict[str, Any]) -> int:
        return await self.on_running_cb(instance)

    async def on_gone(self, instance_id: int) -> None:
        if self.on_gone_cb is not None:
            await self.on_gone_cb(instance_id)


@dataclass
class _Fault:
    endpoint: str
    kind: str  # "status" | "reset" | "delay"
    count: int | None = 1  # None = until cleared
    probability: float = 1.0
    status: int = 503
    body: bytes = b""
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    when: str = "before"  # "before" the handler runs, or "after" (the action happened)


@dataclass
class _LogJob:
    text: str
    polls_left: int


_OCI_ERROR = (
    "Error response from daemon: failed to create task for container: failed to create shim task: "
    "OCI runtime create failed: runc create failed: unable to start container process: error during "
    "container init: error running hook #0: nvidia-container-cli: initialization error: driver error"
)
_LAYERS = ("4c7d45f7c63c", "9b1e3a2d6f10", "e0a1b2c3d4f5", "77aa0c1d2e3f")


@dataclass
class SimInstance:
    """One rented instance inside the sim. Its state is a function of sim-clock time."""

    id: int
    offer: dict[str, Any]
    label: str | None
    image: str
    env: dict[str, str]
    onstart: str | None
    runtype: str
    image_runtype: str
    disk: float
    api_key: str
    created_at: float
    gpu_dph: float
    storage_dph: float
    is_bid: bool = False
    args: list[str] | None = None
    template_hash_id: str | None = None
    intended: str = "running"
    phase: str = "provisioning"
    phase_started: float = 0.0
    phase_duration: float | None = None
    plan: list[tuple[str, float | None]] = field(default_factory=list)
    fault: str | None = None
    note: str | None = None  # status_msg override for stopped/fault states
    boot_seconds: float | None = None
    booting_since: float | None = None
    stopped_status: str = "stopped"
    ports: dict[str, list[dict[str, str]]] | None = None
    comfy_port: int | None = None
    ssh_port: int | None = None
    ssh_host: str | None = None
    up: bool = False
    gen: int = 0
    bringup: asyncio.Task[None] | None = field(default=None, repr=False)
    ssh_keys: list[str] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)
    billed_until: float = 0.0
    cost: float = 0.0

    @property
    def dph_total(self) -> float:
        return round(self.gpu_dph + self.storage_dph, 6)

    @property
    def actual_status(self) -> str | None:
        if self.fault:
            return self.fault
        return {
            "provisioning": None,
            "created": "created",
            "loading": "loading",
            "running": "running" if self.up else "loading",
            "stopped": self.stopped_status,
            "scheduling": "stopped",
            "rebooting": "rebooting",
            "recycling": "recycling",
        }.get(self.phase, self.phase)

    @property
    def wants_ports(self) -> list[tuple[int, str]]:
        """Internal ports to map: every ``-p A:B`` in env, 22 for direct SSH, 8080 for direct Jupyter."""
        out: list[tuple[int, str]] = []
        for key in self.env:
            m = re.match(r"^-p\s+(?:[\d.]+:)?(?:\d+:)?(\d+)(?:/(tcp|udp))?$", key.strip())
            if m:
                out.append((int(m.group(1)), m.group(2) or "tcp"))
        tokens = self.image_runtype.split()
        if "ssh_direc" in tokens:
            out.append((22, "tcp"))
        if "jupyter_direc" in tokens:
            out.append((8080, "tcp"))
        return list(dict.fromkeys(out))


class _Reset(Exception):
    """Close the connection without answering."""


def _json(status: int, obj: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON answer with ``Content-Type`` exactly ``application/json`` (no charset), as Vast sends."""
    h = {"Content-Type": JSON}
    h.update(headers or {})
    return web.Response(status=status, body=json.dumps(obj).encode(), headers=h)


def _err(status: int, error: str | None, msg: str, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"success": False}
    if error is not None:
        body["error"] = error
    body["msg"] = msg
    body.update(extra)
    return _json(status, body)


def _gateway_html(status: int) -> bytes:
    reason = {
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Temporarily Unavailable",
        504: "Gateway Time-out",
    }.get(status, "Error")
    return (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n<center><h1>{status} "
        f"{reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    ).encode()


def _deadman_spec(onstart: str | None) -> tuple[float, float, str] | None:
    """(timeout, grace, lease file name) of an onstart script with the dead-man loop."""
    if not onstart or DEADMAN_MARKER not in onstart:
        return None
    values: dict[str, str] = {}
    try:
        tokens = shlex.split(onstart.split(DEADMAN_MARKER, 1)[1])
    except ValueError:
        return None
    for token in tokens:
        name, _, value = token.partition("=")
        if name in ("TIMEOUT", "GRACE", "LEASE") and name not in values:
            values[name] = value
    try:
        return float(values["TIMEOUT"]), float(values.get("GRACE", "0")), values["LEASE"].rsplit("/", 1)[-1]
    except (KeyError, ValueError):
        return None


def _parse_env_string(text: str) -> dict[str, str]:
    """The CLI's docker-flag string → env object: ``-e A=B -p 8188:8188 -h name``."""
    out: dict[str, str] = {}
    tokens = shlex.split(text)
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok == "-e" and nxt is not None:
            k, _, v = nxt.partition("=")
            out[k] = v
            i += 2
        elif tok == "-p" and nxt is not None:
            out[f"-p {nxt}"] = "1"
            i += 2
        elif tok == "-h" and nxt is not None:
            out["-h"] = nxt
            i += 2
        else:
            out[tok] = "1"
            i += 1
    return out


_RUNTYPE_TOKENS = {
    "ssh": "ssh",
    "ssh_proxy": "ssh_proxy",
    "ssh_direc": "ssh_direc",
    "ssh_direct": "ssh_direc",
    "jupyter": "jupyter",
    "jupyter_proxy": "jupyter_proxy",
    "jupyter_direc": "jupyter_direc",
    "jupyter_direct": "jupyter_direc",
    "args": "args",
}

# Columns of the instance table that select_filters / order_by may use; everything else on
# the row is computed and answers 400, as on Vast.
_STORED_COLUMNS = frozenset(
    {
        "id",
        "label",
        "actual_status",
        "intended_status",
        "cur_state",
        "next_state",
        "gpu_name",
        "verification",
        "machine_id",
        "host_id",
        "bundle_id",
        "image_uuid",
        "start_date",
        "end_date",
        "geolocation",
        "status_msg",
        "template_id",
        "template_hash_id",
        "is_bid",
        "disk_space",
        "public_ipaddr",
        "image_runtype",
    }
)

Provider = Any  # an object with ``async on_running(dict) -> int`` and optional ``async on_gone(int)``


class VastSim:
    """The fake Vast server. See the module docstring; every knob is an attribute tests may set."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        catalog: Iterable[dict[str, Any]] | None = None,
        clock: Clock | None = None,
        boot_seconds: float = 30.0,
        boot_overrides: Mapping[int, float] | None = None,
        start_seconds: float | None = None,
        reboot_seconds: float = 5.0,
        scheduling_seconds: float = 0.0,
        credit: float = 25.0,
        debit_mode: bool = False,
        comfy_provider: Provider | None = None,
        ssh_provider: Provider | None = None,
        provider_timeout: float = 10.0,
        show_missing: str = "null",
        legacy_list: str = "gone",
        stopped_status: str = "stopped",
        logs_not_ready_polls: int = 2,
        public_ip: str = "127.0.0.1",
        first_instance_id: int = 20_000_001,
        auth_error_status: int = 401,
        ipv6_port_entries: bool = True,
        auto_tick: float | None = None,
        seed: int = 0,
    ) -> None:
        if api_key is not None and not api_key.strip():
            raise ValueError("api_key must be None (accept any key) or non-empty")
        self.api_key = api_key
        self.clock = clock or Clock()
        self.offers: dict[int, dict[str, Any]] = {
            int(o["id"]): dict(o) for o in (default_catalog() if catalog is None else catalog)
        }
        self.boot_seconds = float(boot_seconds)
        #: Boot time per offer id, for instances created from that offer (overrides ``boot_seconds``).
        self.boot_overrides: dict[int, float] = dict(boot_overrides or {})
        self.start_seconds = start_seconds
        self.reboot_seconds = float(reboot_seconds)
        self.scheduling_seconds = float(scheduling_seconds)
        self._credit = float(credit)
        self.debit_mode = debit_mode
        self.comfy_provider = comfy_provider
        self.ssh_provider = ssh_provider
        self.provider_timeout = float(provider_timeout)
        self.show_missing = show_missing  # "null" → 200 {"instances": null}; "404" → 404 no_such_instance
        self.legacy_list = legacy_list  # "gone" → 410; "old" → {"instances_found", "instances"}
        self.stopped_status = stopped_status  # actual_status after a stop: "stopped" or "exited"
        self.logs_not_ready_polls = int(logs_not_ready_polls)
        self.public_ip = public_ip
        self.auth_error_status = auth_error_status
        self.ipv6_port_entries = ipv6_port_entries
        self.auto_tick = auto_tick
        #: Offers whose machine "cannot start now" (create answers 410 with cancel_unavail).
        self.unavailable_offers: set[int] = set()
        #: When true, every create fails for credit (``create_credit_status`` with insufficient_credit).
        self.create_credit_failure = False
        self.create_credit_status = 400
        self.release_offers_on_destroy = True

        self.instances: dict[int, SimInstance] = {}
        self.destroyed: dict[int, SimInstance] = {}
        self.requests: list[SimRequest] = []
        self.base_url: str = ""

        self._rng = random.Random(seed)
        self._next_id = int(first_instance_id)
        self._token_secret = secrets.token_bytes(16)
        self._faults: list[_Fault] = []
        self._rate_limits: dict[str, float] = {}
        self._rate_style = "detail"
        self._rate_retry_after: float | None = None
        self._rate_last: dict[tuple[str, str], float] = {}
        self._holds: dict[int, float | None] = {}
        self._log_jobs: dict[str, _LogJob] = {}
        self._used_ports: dict[int, set[int]] = {}
        self._gone_tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._deadman_since: dict[tuple[int, int], float] = {}
        self._deadman_firing: set[int] = set()
        self._deadman_tasks: set[asyncio.Task[None]] = set()
        #: (instance id, HTTP status) of every stop the emulated dead-man loop sent.
        self.deadman_stops: list[tuple[int, int]] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 = any free port); sets and returns ``base_url``."""
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in str(bound[0]) else bound[0]
        self.base_url = f"http://{shown}:{bound[1]}"
        self._stopping = asyncio.Event()
        if self.auto_tick:
            self._ticker = asyncio.create_task(self._tick_forever(self.auto_tick))
        log.info("vast sim listening base_url=%s", self.base_url)
        return self.base_url

    async def stop(self) -> None:
        """Stop listening, cancel the ticker and any slow answers, and tell providers everything is gone."""
        self._stopping.set()
        for task in list(self._deadman_tasks):
            task.cancel()
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        bringups = {i.bringup for i in self.instances.values() if i.bringup is not None}
        if bringups:  # let callbacks in flight finish, so every on_running gets its on_gone
            await asyncio.wait(bringups, timeout=self.provider_timeout)
        for inst in list(self.instances.values()):
            self._tear_down(inst)
        if self._gone_tasks:
            await asyncio.wait(set(self._gone_tasks), timeout=self.provider_timeout)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> VastSim:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _tick_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.tick()
            except Exception:  # pragma: no cover - keep ticking in demo mode
                log.exception("vast sim tick failed")

    # ------------------------------------------------------------------ test API

    @property
    def credit(self) -> float:
        return self._credit

    @credit.setter
    def credit(self, value: float) -> None:
        self._credit = float(value)

    def requests_for(self, endpoint: str) -> list[SimRequest]:
        """The recorded requests routed to ``endpoint`` (``"list"``, ``"create"``...)."""
        return [r for r in self.requests if r.endpoint == endpoint]

    def clear_requests(self) -> None:
        self.requests.clear()

    def render(self, instance_id: int) -> dict[str, Any] | None:
        """The instance row as the API would show it now (without advancing state)."""
        inst = self.instances.get(instance_id)
        return self._render(inst) if inst else None

    async def tick(self) -> None:
        """Advance every instance to the clock's now, bill, and run pending provider callbacks."""
        await self._settle()

    def add_instance(
        self,
        *,
        label: str | None = None,
        status: str | None = "running",
        offer_id: int | None = None,
        image: str = "ghcr.io/socialsync/comfyui:latest",
        env: Mapping[str, str] | None = None,
        onstart: str | None = None,
        disk: float = 16.0,
        runtype: str = "ssh_direc ssh_proxy",
        boot_seconds: float | None = None,
        started_ago: float = 3600.0,
        instance_id: int | None = None,
    ) -> int:
        """Pre-seed an instance (e.g. one left from an earlier run); returns its id.

        ``status``: ``"running"``, ``"loading"``, ``"created"``/``None`` (boots from now),
        ``"stopped"``, or a fault (``"exited"``, ``"unknown"``, ``"offline"``).
        """
        offer = self.offers.get(offer_id) if offer_id is not None else None
        if offer is None:
            template = self._rng.choice(list(self.offers.values())) if self.offers else default_catalog(1)[0]
            offer = dict(template, id=9_000_000 + self._rng.randint(0, 999_999), rented=True, rentable=False)
        else:
            offer["rented"], offer["rentable"] = True, False
        now = self.clock.now()
        inst = self._new_instance(
            offer,
            label=label,
            image=image,
            env={"-p 8188:8188": "1", **(env or {})}
            if env is None or "-p 8188:8188" not in env
            else dict(env),
            onstart=onstart,
            disk=disk,
            runtype=runtype,
            price=None,
            created_at=now - started_ago,
            instance_id=instance_id,
        )
        inst.boot_seconds = boot_seconds
        inst.billed_until = now
        if status in ("running", "exited", "unknown", "offline"):
            self._set_plan(inst, now, [("running", None)])
            if status != "running":
                self.set_status(inst.id, status)
        elif status == "loading":
            self._set_plan(inst, now, [("loading", 0.8 * self._boot(inst)), ("running", None)])
        elif status == "stopped":
            inst.intended = "stopped"
            self._set_plan(inst, now, [("stopped", None)])
        else:
            self._start_boot(inst, now)
        return inst.id

    def set_status(self, instance_id: int, status: str | None, msg: str | None = None) -> None:
        """Inject a fault: ``"exited"`` (OCI error), ``"unknown"`` (no heartbeat), ``"offline"``
        (host down), ``"stopped"`` (outbid / stopped by Vast); ``None``/``"running"`` clears it."""
        inst = self._get(instance_id)
        now = self.clock.now()
        self._advance(inst, now)
        if status in (None, "running"):
            inst.fault, inst.note = None, None
            if status == "running" and inst.phase not in ("running",):
                inst.intended = "running"
                self._set_plan(inst, now, [("running", None)])
            return
        if status in ("exited", "offline"):
            inst.fault = status
            inst.note = msg or (
                _OCI_ERROR if status == "exited" else "host offline: no connection to machine"
            )
            self._tear_down(inst)
        elif status == "unknown":
            inst.fault, inst.note = "unknown", msg or "no recent heartbeat from host"
        elif status == "stopped":
            inst.fault = None
            inst.note = msg or "Instance stopped: outbid"
            self._set_plan(inst, now, [("stopped", None)])
            self._tear_down(inst)
        else:
            raise ValueError(f"unsupported injected status {status!r}")
        inst.log_lines.append(f"[sim] status -> {status}: {inst.note}")

    def set_boot_seconds(self, instance_id: int, seconds: float) -> None:
        """Change one instance's boot time; an instance still booting is re-timed from its boot start."""
        inst = self._get(instance_id)
        inst.boot_seconds = float(seconds)
        if inst.booting_since is not None and inst.phase in ("provisioning", "created", "loading"):
            now = self.clock.now()
            self._advance(inst, now)
            self._start_boot(inst, inst.booting_since)
            self._advance(inst, now)

    def hold_scheduling(self, instance_id: int, seconds: float | None = None) -> None:
        """The next start of this instance waits in "scheduling" for ``seconds`` (None = until released)."""
        self._holds[instance_id] = seconds

    def release_scheduling(self, instance_id: int) -> None:
        """End an open-ended scheduling hold now."""
        self._holds.pop(instance_id, None)
        inst = self.instances.get(instance_id)
        if inst is not None and inst.phase == "scheduling":
            now = self.clock.now()
            self._advance(inst, now)
            inst.phase_duration = max(0.0, now - inst.phase_started)
            self._advance(inst, now)

    def append_log(self, instance_id: int, *lines: str) -> None:
        self._get(instance_id).log_lines.extend(lines)

    # fault injection -------------------------------------------------------------

    def inject_status(
        self,
        endpoint: str,
        status: int = 503,
        *,
        count: int | None = 1,
        body: bytes | str | dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        probability: float = 1.0,
        when: str = "before",
    ) -> None:
        """The next ``count`` requests to ``endpoint`` (``"*"`` = any) answer ``status`` with ``body``.

        ``count=None`` with ``probability`` < 1 gives a random error rate until ``clear_faults``.
        ``when="after"`` lets the handler act first (a create that happened but answered 5xx).
        """
        content_type = JSON
        if body is None:
            raw, content_type = _gateway_html(status), "text/html"
        elif isinstance(body, dict):
            raw = json.dumps(body).encode()
        elif isinstance(body, str):
            raw, content_type = body.encode(), "text/plain"
        else:
            raw = body
        self._faults.append(
            _Fault(
                endpoint,
                "status",
                count,
                probability,
                status,
                raw,
                content_type,
                dict(headers or {}),
                when=when,
            )
        )

    def inject_5xx(
        self,
        endpoint: str,
        count: int | None = 1,
        *,
        status: int = 503,
        probability: float = 1.0,
        when: str = "before",
    ) -> None:
        """A burst of gateway errors (nginx HTML bodies)."""
        self.inject_status(endpoint, status, count=count, probability=probability, when=when)

    def inject_rate_limit(
        self,
        endpoint: str,
        *,
        style: str = "detail",
        count: int | None = 1,
        retry_after: float | None = None,
        reset_at: float | None = None,
    ) -> None:
        """429s in one of Vast's styles: ``"text"``, ``"text_threshold"``, ``"detail"``, ``"json"``
        (rate_limit_exceeded) or ``"quota"`` (search_quota_exceeded + X-RateLimit-Reset)."""
        body, ctype, headers = self._rate_limit_body(style, retry_after, reset_at)
        self._faults.append(_Fault(endpoint, "status", count, 1.0, 429, body, ctype, headers))

    def inject_reset(self, endpoint: str, count: int | None = 1, *, when: str = "before") -> None:
        """Close the connection without an answer (``when="after"``: after the handler acted)."""
        self._faults.append(_Fault(endpoint, "reset", count, when=when))

    def inject_delay(self, endpoint: str, seconds: float, count: int | None = 1) -> None:
        """Answer the next ``count`` requests ``seconds`` late (real time, for client timeouts)."""
        self._faults.append(_Fault(endpoint, "delay", count, delay=float(seconds)))

    def inject_success_false(
        self,
        endpoint: str,
        *,
        error: str = "invalid_args",
        msg: str = "Request could not be completed.",
        count: int | None = 1,
    ) -> None:
        """HTTP 200 with ``{"success": false, "error", "msg"}`` (the handler does nothing)."""
        self.inject_status(endpoint, 200, count=count, body={"success": False, "error": error, "msg": msg})

    def inject_create_error(
        self, error: str = "invalid_args", msg: str | None = None, *, status: int = 400, count: int | None = 1
    ) -> None:
        """A create refusal such as ``invalid_price`` / ``invalid_args`` / ``no_ssh_key_for_vm``."""
        text = msg or f"error {status}/3467: Invalid args: {error}"
        self.inject_status(
            "create", status, count=count, body={"success": False, "error": error, "msg": text}
        )

    def clear_faults(self) -> None:
        self._faults.clear()

    def enable_rate_limit(
        self,
        intervals: Mapping[str, float] | float | None = None,
        *,
        style: str = "detail",
        retry_after: float | None = None,
    ) -> None:
        """Enforce a minimum interval per (endpoint, key) like Vast; defaults to Vast's thresholds."""
        if intervals is None:
            intervals = {
                "list": 1.0,
                "manage": 1.0,
                "reboot": 1.0,
                "show": 2.0,
                "destroy": 3.0,
                "create": 4.5,
                "bundles": 6.0,
            }
        if isinstance(intervals, int | float):
            intervals = dict.fromkeys(
                (
                    "list",
                    "manage",
                    "reboot",
                    "show",
                    "destroy",
                    "create",
                    "bundles",
                    "request_logs",
                    "ssh",
                    "user",
                    "search_asks",
                ),
                float(intervals),
            )
        self._rate_limits = dict(intervals)
        self._rate_style = style
        self._rate_retry_after = retry_after

    def disable_rate_limit(self) -> None:
        self._rate_limits = {}
        self._rate_last.clear()

    def _rate_limit_body(
        self, style: str, retry_after: float | None, reset_at: float | None = None, threshold: float = 1.0
    ) -> tuple[bytes, str, dict[str, str]]:
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = f"{retry_after:g}"
        if style == "text":
            return b"API requests too frequent", "text/plain", headers
        if style == "text_threshold":
            return (
                f"API requests too frequent: endpoint threshold={threshold}".encode(),
                "text/plain",
                headers,
            )
        if style == "detail":
            return (
                json.dumps({"detail": f"API requests too frequent endpoint threshold={threshold}"}).encode(),
                JSON,
                headers,
            )
        if style == "json":
            body = {"success": False, "error": "rate_limit_exceeded", "msg": "API requests too frequent"}
            return json.dumps(body).encode(), JSON, headers
        if style == "quota":
            now = self.clock.now()
            reset = reset_at if reset_at is not None else (math.floor(now / 86400) + 1) * 86400
            headers["X-RateLimit-Reset"] = str(int(reset))
            body = {
                "success": False,
                "error": "search_quota_exceeded",
                "msg": "Daily search quota exceeded. The quota resets at UTC midnight.",
            }
            return json.dumps(body).encode(), JSON, headers
        raise ValueError(f"unknown 429 style {style!r}")

    # ------------------------------------------------------------------ HTTP plumbing

    _ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
        (m, re.compile(p), name)
        for m, p, name in (
            ("POST", r"^/bundles$", "bundles"),
            ("GET", r"^/bundles$", "bundles"),
            ("PUT", r"^/search/asks$", "search_asks"),
            ("PUT", r"^/asks/(?P<id>\d+)$", "create"),
            ("GET", r"^/instances$", "list"),
            ("GET", r"^/instances/(?P<id>\d+)$", "show"),
            ("PUT", r"^/instances/(?P<id>\d+)$", "manage"),
            ("DELETE", r"^/instances/(?P<id>\d+)$", "destroy"),
            ("PUT", r"^/instances/reboot/(?P<id>\d+)$", "reboot"),
            ("PUT", r"^/instances/recycle/(?P<id>\d+)$", "recycle"),
            ("PUT", r"^/instances/request_logs/(?P<id>\d+)$", "request_logs"),
            ("POST", r"^/instances/(?P<id>\d+)/ssh$", "ssh"),
            ("GET", r"^/instances/(?P<id>\d+)/ssh$", "ssh_list"),
            ("GET", r"^/users/current$", "user"),
        )
    )

    def _route(self, method: str, path: str) -> tuple[str | None, dict[str, str], str | None]:
        """``(endpoint, params, api_version)`` for a path, or ``(None, {}, None)``."""
        if method == "GET" and path.startswith("/instance_logs/"):
            return "logs_fetch", {"token": path.removeprefix("/instance_logs/").removesuffix(".log")}, None
        m = re.match(r"^/api/(v\d+)(/.*?)/?$", path)
        if not m:
            return None, {}, None
        version, sub = m.group(1), m.group(2)
        for route_method, pattern, name in self._ROUTES:
            hit = pattern.match(sub)
            if hit and route_method == method:
                if name == "list" and version == "v0":
                    name = "list_v0"
                return name, hit.groupdict(), version
        return None, {}, version

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        text = raw.decode("utf-8", "replace")
        parsed: Any = None
        bad_json = False
        if text.strip():
            try:
                parsed = json.loads(text)
            except ValueError:
                bad_json = True
        rec = SimRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            json=parsed,
            body=text,
            headers=dict(request.headers),
            time=self.clock.now(),
            mono=time.monotonic(),
        )
        self.requests.append(rec)
        endpoint, params, _version = self._route(request.method, request.path)
        rec.endpoint = endpoint
        try:
            resp = await self._handle(request, rec, endpoint, params, parsed, bad_json)
        except _Reset:
            rec.reset = True
            log.debug("vast sim reset endpoint=%s", endpoint)
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)
        rec.status = resp.status
        log.debug("vast sim %s %s endpoint=%s status=%s", request.method, request.path, endpoint, resp.status)
        return resp

    def _take_fault(self, endpoint: str, when: str) -> _Fault | None:
        for fault in self._faults:
            if fault.when != when or fault.kind == "delay" or fault.endpoint not in (endpoint, "*"):
                continue
            if fault.count is not None and fault.count <= 0:
                continue
            if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                continue
            if fault.count is not None:
                fault.count -= 1
            return fault
        return None

    def _fault_response(self, fault: _Fault) -> web.Response:
        if fault.kind == "reset":
            raise _Reset
        headers = {"Content-Type": fault.content_type, **fault.headers}
        return web.Response(status=fault.status, body=fault.body, headers=headers)

    async def _apply_delays(self, endpoint: str) -> None:
        for fault in self._faults:
            if fault.kind != "delay" or fault.endpoint not in (endpoint, "*"):
                continue
            if fault.count is not None:
                if fault.count <= 0:
                    continue
                fault.count -= 1
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=fault.delay)
            except TimeoutError:
                pass
            return

    def _identify(self, request: web.Request) -> tuple[str, str, int | None] | None:
        """``(kind, key, instance_id)`` of the caller: kind ``"user"`` or ``"instance"``; None = refused."""
        header = request.headers.get("Authorization", "")
        key = header[7:].strip() if header[:7].lower() == "bearer " else ""
        key = key or request.query.get("api_key", "").strip()
        if not key:
            return None
        for inst in self.instances.values():
            if hmac.compare_digest(inst.api_key.encode(), key.encode()):
                return "instance", key, inst.id
        if self.api_key is None or hmac.compare_digest(key.encode(), self.api_key.encode()):
            return "user", key, None
        return None

    def _rate_limited(self, endpoint: str, identity: str) -> web.Response | None:
        interval = self._rate_limits.get(endpoint)
        if not interval:
            return None
        now = time.monotonic()
        last = self._rate_last.get((endpoint, identity))
        if last is not None and now - last < interval:
            body, ctype, headers = self._rate_limit_body(
                self._rate_style, self._rate_retry_after, threshold=interval
            )
            return web.Response(status=429, body=body, headers={"Content-Type": ctype, **headers})
        self._rate_last[(endpoint, identity)] = now
        return None

    async def _handle(
        self,
        request: web.Request,
        rec: SimRequest,
        endpoint: str | None,
        params: dict[str, str],
        body: Any,
        bad_json: bool,
    ) -> web.Response:
        if endpoint is None:
            return _err(404, "not_found", f"No route for {request.method} {request.path}")
        await self._apply_delays(endpoint)
        fault = self._take_fault(endpoint, "before")
        if fault is not None:
            return self._fault_response(fault)
        if endpoint == "logs_fetch":  # storage bucket: no auth
            return self._logs_fetch(params["token"])
        who = self._identify(request)
        if who is None:
            return _err(self.auth_error_status, "auth_error", "Invalid user key")
        kind, key, scoped_id = who
        if kind == "instance":
            refusal = self._check_instance_scope(endpoint, params, body, scoped_id)
            if refusal is not None:
                return refusal
        limited = self._rate_limited(endpoint, key)
        if limited is not None:
            return limited
        if bad_json:
            return _err(400, "invalid_request", "Invalid json body")
        if body is not None and not isinstance(body, dict) and request.method != "GET":
            return _err(400, "invalid_request", "Invalid json body")
        await self._settle()
        handler = getattr(self, f"_h_{endpoint}")
        resp: web.Response = await handler(request, params, body if isinstance(body, dict) else {}, key)
        after = self._take_fault(endpoint, "after")
        if after is not None:
            return self._fault_response(after)
        return resp

    def _check_instance_scope(
        self, endpoint: str, params: dict[str, str], body: Any, scoped_id: int | None
    ) -> web.Response | None:
        """A container's own key may only start, stop or destroy that one instance."""
        target = int(params["id"]) if "id" in params else None
        only_state = isinstance(body, dict) and set(body) <= {"state"} and "state" in body
        if target == scoped_id and (endpoint == "destroy" or (endpoint == "manage" and only_state)):
            return None
        return _err(403, "not_authorized", f"This key can only start, stop or destroy instance {scoped_id}.")

    # ------------------------------------------------------------------ state machine

    def _boot(self, inst: SimInstance) -> float:
        return float(inst.boot_seconds if inst.boot_seconds is not None else self.boot_seconds)

    def _boot_plan(self, inst: SimInstance) -> list[tuple[str, float | None]]:
        boot = self._boot(inst)
        return [
            ("provisioning", 0.1 * boot),
            ("created", 0.1 * boot),
            ("loading", 0.8 * boot),
            ("running", None),
        ]

    def _set_plan(self, inst: SimInstance, at: float, plan: list[tuple[str, float | None]]) -> None:
        inst.plan = list(plan)
        inst.booting_since = None
        self._enter_next(inst, at)

    def _start_boot(self, inst: SimInstance, at: float) -> None:
        """The first boot of a new instance: provisioning → created → loading → running."""
        self._set_plan(inst, at, self._boot_plan(inst))
        inst.booting_since = at

    def _enter_next(self, inst: SimInstance, at: float) -> None:
        phase, duration = inst.plan.pop(0) if inst.plan else ("running", None)
        prev = inst.phase
        inst.phase, inst.phase_started, inst.phase_duration = phase, at, duration
        if phase == "loading" and prev != "loading":
            inst.log_lines.append(f"Pulling image {inst.image}")
        elif phase == "running":
            inst.log_lines.extend(
                ["Starting container...", f"Running onstart for {inst.image}"]
                if inst.onstart
                else ["Starting container..."]
            )
        elif phase in ("stopped", "rebooting", "recycling", "scheduling"):
            inst.log_lines.append(f"[sim] {phase}")

    def _advance(self, inst: SimInstance, now: float) -> None:
        """Walk the instance's phases up to ``now``, billing each stretch at its rate."""
        while inst.phase_duration is not None and now >= inst.phase_started + inst.phase_duration:
            at = inst.phase_started + inst.phase_duration
            self._bill(inst, at)
            self._enter_next(inst, at)
        self._bill(inst, now)

    def _bill(self, inst: SimInstance, until: float) -> None:
        dt = until - inst.billed_until
        if dt <= 0:
            return
        rate = inst.storage_dph + (
            inst.gpu_dph if inst.phase in ("running", "rebooting", "recycling") else 0.0
        )
        cost = rate * dt / 3600.0
        inst.cost += cost
        self._credit -= cost
        inst.billed_until = until

    async def _settle(self) -> None:
        """Bring every instance up to the clock, then run provider callbacks (bounded wait)."""
        now = self.clock.now()
        for inst in list(self.instances.values()):
            self._advance(inst, now)
        if self._credit <= 0 and not self.debit_mode:
            for inst in self.instances.values():
                if inst.phase != "stopped":
                    inst.intended = "stopped"
                    inst.note = "Instance stopped: insufficient credit"
                    self._set_plan(inst, now, [("stopped", None)])
                    self._tear_down(inst)
        self._deadman_check()
        pending: set[asyncio.Task[None]] = set(self._gone_tasks)
        for inst in self.instances.values():
            if inst.phase == "running" and inst.fault not in ("exited", "offline") and not inst.up:
                if inst.bringup is None:
                    inst.bringup = asyncio.create_task(self._bring_up(inst, inst.gen))
                pending.add(inst.bringup)
        pending = {t for t in pending if not t.done()}
        if pending:
            await asyncio.wait(pending, timeout=self.provider_timeout)

    def _deadman_check(self) -> None:
        """The container's dead-man loop: the lease file's age in the instance's ComfyUI
        input folder (wall-clock mtime, as ``stat`` sees it) against ``TIMEOUT``, or the
        time since the container started against ``TIMEOUT + GRACE`` before any lease.
        Stale: the instance stops itself through the API with its own key."""
        sims = getattr(self.comfy_provider, "sims", None)
        now = time.time()
        for inst in self.instances.values():
            spec = _deadman_spec(inst.onstart)
            if spec is None or inst.phase != "running" or inst.intended != "running" or not inst.up:
                continue
            timeout, grace, lease = spec
            since = self._deadman_since.setdefault((inst.id, inst.gen), now)
            sim = sims.get(inst.id) if isinstance(sims, dict) else None
            path = getattr(sim, "input_dir", None)
            stat = None
            if path is not None:
                try:
                    stat = (path / lease).stat()
                except OSError:
                    stat = None
            fresh = stat is not None and stat.st_mtime > since  # a lease from before a stop does not count
            age, limit = (now - stat.st_mtime, timeout) if fresh and stat else (now - since, timeout + grace)
            if age > limit and inst.id not in self._deadman_firing and self.base_url:
                self._deadman_firing.add(inst.id)
                task = asyncio.get_running_loop().create_task(self._deadman_stop(inst.id, inst.api_key))
                self._deadman_tasks.add(task)  # not awaited by _settle: its request settles too
                task.add_done_callback(self._deadman_tasks.discard)

    async def _deadman_stop(self, instance_id: int, key: str) -> None:
        body = {"state": "stopped"}
        try:
            async with aiohttp.ClientSession() as session, session.put(
                    f"{self.base_url}/api/v0/instances/{instance_id}/", json=body,
                    headers={"Authorization": f"Bearer {key}"}) as resp:
                self.deadman_stops.append((instance_id, resp.status))
                log.info("dead-man stop instance_id=%d status=%d", instance_id, resp.status)
        except aiohttp.ClientError as exc:
            log.warning("dead-man stop failed instance_id=%d error=%s", instance_id, exc)
        finally:
            self._deadman_firing.discard(instance_id)

    async def _bring_up(self, inst: SimInstance, gen: int) -> None:
        comfy_port: int | None = None
        ssh_port: int | None = None
        wanted = inst.wants_ports
        try:
            row = self._render(inst)
            row["container_api_key"] = inst.api_key  # what the container sees as CONTAINER_API_KEY
            if self.comfy_provider is not None and (8188, "tcp") in wanted:
                comfy_port = int(await self.comfy_provider.on_running(row))
            if self.ssh_provider is not None:
                ssh_port = int(await self.ssh_provider.on_running(row))
        except Exception as exc:
            log.warning("vast sim provider failed instance_id=%s error=%s", inst.id, exc)
            if inst.gen == gen and inst.id in self.instances:
                inst.fault, inst.note = "exited", f"Error: container failed to start: {exc}"
            self._notify_gone(inst.id, comfy_port is not None, ssh_port is not None)
            inst.bringup = None
            return
        current = (
            inst.gen == gen
            and inst.id in self.instances
            and inst.phase == "running"
            and inst.fault not in ("exited", "offline")
        )
        inst.bringup = None
        if not current:
            self._notify_gone(inst.id, comfy_port is not None, ssh_port is not None)
            return
        inst.comfy_port = comfy_port
        inst.ports = self._assign_ports(inst, comfy_port, ssh_port)
        if ssh_port is not None:
            inst.ssh_host, inst.ssh_port = self.public_ip, ssh_port
        inst.up = True
        inst.log_lines.append(f"[sim] container up ports={json.dumps(inst.ports)}")
        log.debug("vast sim instance up instance_id=%s", inst.id)

    def _assign_ports(
        self, inst: SimInstance, comfy_port: int | None, ssh_port: int | None
    ) -> dict[str, Any]:
        used = self._used_ports.setdefault(int(inst.offer.get("machine_id") or 0), set())
        start = int(inst.offer.get("direct_port_start") or -1)
        end = int(inst.offer.get("direct_port_end") or -1)
        ports: dict[str, Any] = {}
        for internal, proto in inst.wants_ports:
            if internal == 8188 and proto == "tcp" and comfy_port is not None:
                host = comfy_port
            elif internal == 22 and proto == "tcp" and ssh_port is not None:
                host = ssh_port
            elif internal > 70000:
                host = internal
            else:
                host = 0
                for _ in range(200):
                    cand = (
                        self._rng.randint(start, end)
                        if 0 < start <= end
                        else self._rng.randint(30_000, 60_000)
                    )
                    if cand not in used:
                        host = cand
                        break
                used.add(host)
            entries = [{"HostIp": "0.0.0.0", "HostPort": str(host)}]
            if self.ipv6_port_entries:
                entries.append({"HostIp": "::", "HostPort": str(host)})
            ports[f"{internal}/{proto}"] = entries
        return ports

    def _tear_down(self, inst: SimInstance) -> None:
        """The container went away: no ports; bump the generation; tell the providers."""
        inst.gen += 1
        if inst.ports:
            used = self._used_ports.get(int(inst.offer.get("machine_id") or 0), set())
            for entries in inst.ports.values():
                for e in entries:
                    used.discard(int(e["HostPort"]))
        inst.ports = None
        if inst.up:
            inst.up = False
            self._notify_gone(inst.id, inst.comfy_port is not None, inst.ssh_port is not None)
        inst.comfy_port = None
        if self.ssh_provider is not None:
            inst.ssh_port = None

    def _notify_gone(self, instance_id: int, comfy: bool, ssh: bool) -> None:
        for provider, wanted in ((self.comfy_provider, comfy), (self.ssh_provider, ssh)):
            if provider is None or not wanted or not hasattr(provider, "on_gone"):
                continue
            try:
                task = asyncio.get_running_loop().create_task(self._call_gone(provider, instance_id))
            except RuntimeError:  # called from sync code with no loop running: nobody to tell
                log.debug("vast sim on_gone skipped (no running loop) instance_id=%s", instance_id)
                continue
            self._gone_tasks.add(task)
            task.add_done_callback(self._gone_tasks.discard)

    async def _call_gone(self, provider: Provider, instance_id: int) -> None:
        try:
            await provider.on_gone(instance_id)
        except Exception as exc:
            log.warning("vast sim provider on_gone failed instance_id=%s error=%s", instance_id, exc)

    def _get(self, instance_id: int) -> SimInstance:
        inst = self.instances.get(int(instance_id))
        if inst is None:
            raise KeyError(f"no instance {instance_id} in the sim")
        return inst

    def _new_instance(
        self,
        offer: dict[str, Any],
        *,
        label: str | None,
        image: str,
        env: dict[str, str],
        onstart: str | None,
        disk: float,
        runtype: str,
        price: float | None,
        created_at: float,
        instance_id: int | None = None,
        args: list[str] | None = None,
        template_hash_id: str | None = None,
    ) -> SimInstance:
        if instance_id is None:
            instance_id = self._next_id
            self._next_id += 1
        tokens = [_RUNTYPE_TOKENS.get(t, t) for t in runtype.split()] or ["ssh_proxy"]
        base = (
            "jupyter"
            if any(t.startswith("jupyter") for t in tokens)
            else ("args" if "args" in tokens else "ssh")
        )
        image_runtype = " ".join([base, *[t for t in tokens if t != base]])
        storage_dph = float(offer.get("storage_cost") or 0.0) * disk / (30 * 24)
        gpu_dph = float(price) if price is not None else float(offer.get("dph_base") or 0.0)
        inst = SimInstance(
            id=instance_id,
            offer=dict(offer),
            label=label,
            image=image,
            env=env,
            onstart=onstart,
            runtype=runtype,
            image_runtype=image_runtype,
            disk=disk,
            api_key=secrets.token_hex(32),
            created_at=created_at,
            gpu_dph=gpu_dph,
            storage_dph=storage_dph,
            is_bid=price is not None,
            args=args,
            template_hash_id=template_hash_id,
            stopped_status=self.stopped_status,
            billed_until=created_at,
        )
        if self.ssh_provider is None:
            start = int(offer.get("direct_port_start") or -1)
            inst.ssh_host = self.public_ip
            inst.ssh_port = (start if start > 0 else 40_000) + 10_000 + (instance_id % 5_000)
        self.instances[instance_id] = inst
        return inst

    # ------------------------------------------------------------------ rendering

    def _render(self, inst: SimInstance) -> dict[str, Any]:
        now = self.clock.now()
        o = inst.offer
        actual = inst.actual_status
        running = actual == "running"
        allocated = inst.intended == "running" and inst.phase not in ("stopped", "scheduling")
        geo = o.get("geolocation") or ""
        price = {
            "gpuCostPerHour": round(inst.gpu_dph, 6),
            "diskHour": round(inst.storage_dph, 6),
            "totalHour": inst.dph_total,
            "discountTotalHour": 0.0,
            "discountedTotalPerHour": inst.dph_total,
        }
        return {
            "id": inst.id,
            "machine_id": o.get("machine_id"),
            "host_id": o.get("host_id"),
            "bundle_id": o.get("bundle_id"),
            "label": inst.label,
            "image_uuid": inst.image,
            "image_runtype": inst.image_runtype,
            "image_args": list(inst.args or []),
            "extra_env": [[k, v] for k, v in inst.env.items()],
            "onstart": inst.onstart,
            "jupyter_token": hashlib.sha256(inst.api_key.encode()).hexdigest()[:32],
            "template_id": None,
            "template_hash_id": inst.template_hash_id,
            "template_name": None,
            "actual_status": actual,
            "intended_status": inst.intended,
            "cur_state": "running" if allocated else "stopped",
            "next_state": "running" if inst.intended == "running" else "stopped",
            "status_msg": self._status_msg(inst, now),
            "num_gpus": o.get("num_gpus"),
            "gpu_name": o.get("gpu_name"),
            "gpu_ram": o.get("gpu_ram"),
            "gpu_totalram": o.get("gpu_total_ram"),
            "gpu_util": 0.0 if running else None,
            "gpu_temp": 38.0 if running else None,
            "gpu_arch": o.get("gpu_arch"),
            "gpu_frac": o.get("gpu_frac"),
            "gpu_lanes": o.get("gpu_lanes"),
            "gpu_mem_bw": o.get("gpu_mem_bw"),
            "bw_nvlink": o.get("bw_nvlink"),
            "cpu_name": o.get("cpu_name"),
            "cpu_arch": o.get("cpu_arch"),
            "cpu_cores": o.get("cpu_cores"),
            "cpu_cores_effective": o.get("cpu_cores_effective"),
            "cpu_ram": o.get("cpu_ram"),
            "cpu_util": 0.5 if running else 0.0,
            "mem_usage": 1.2 if running else None,
            "mem_limit": round(float(o.get("cpu_ram") or 0) / 1000, 1) if running else None,
            "vmem_usage": 0.0 if running else None,
            "disk_space": inst.disk,
            "disk_usage": 6.4 if running else -1,
            "disk_util": round(6.4 / inst.disk, 4) if running else -1,
            "disk_bw": o.get("disk_bw"),
            "disk_name": o.get("disk_name"),
            "inet_up": o.get("inet_up"),
            "inet_down": o.get("inet_down"),
            "inet_up_cost": o.get("inet_up_cost"),
            "inet_down_cost": o.get("inet_down_cost"),
            "dph_total": inst.dph_total,
            "dph_base": round(inst.gpu_dph, 6),
            "storage_cost": o.get("storage_cost"),
            "storage_total_cost": round(inst.storage_dph, 6),
            "vram_costperhour": round(inst.gpu_dph / max(1.0, float(o.get("gpu_total_ram") or 1) / 1000), 6),
            "search": price,
            "instance": dict(price),
            "is_bid": inst.is_bid,
            "min_bid": o.get("min_bid"),
            "credit_balance": None,
            "credit_discount": None,
            "credit_discount_max": o.get("credit_discount_max"),
            "public_ipaddr": self.public_ip,
            "local_ipaddrs": "172.17.0.2 127.0.0.1",
            "static_ip": o.get("static_ip"),
            "ports": json.loads(json.dumps(inst.ports)) if running and inst.ports else None,
            "direct_port_start": o.get("direct_port_start"),
            "direct_port_end": o.get("direct_port_end"),
            "direct_port_count": o.get("direct_port_count"),
            "ssh_host": inst.ssh_host,
            "ssh_port": inst.ssh_port,
            "ssh_idx": str(inst.id % 10),
            "machine_dir_ssh_port": None,
            "geolocation": geo,
            "country_code": geo[-2:] if len(geo) >= 2 else None,
            "verification": o.get("verification"),
            "reliability2": o.get("reliability2", o.get("reliability")),
            "start_date": inst.created_at,
            "end_date": o.get("end_date"),
            "duration": max(0.0, now - inst.created_at),
            "uptime_mins": round((now - inst.phase_started) / 60, 2) if running else None,
            "client_run_time": round(max(0.0, now - inst.created_at) / 3600, 4),
            "host_run_time": round(max(0.0, now - inst.created_at) / 3600, 4),
            "time_remaining": "",
            "time_remaining_isbid": "",
            "driver_version": o.get("driver_version"),
            "cuda_max_good": o.get("cuda_max_good"),
            "os_version": o.get("os_version"),
            "mobo_name": o.get("mobo_name"),
            "pci_gen": o.get("pci_gen"),
            "pcie_bw": o.get("pcie_bw"),
            "dlperf": o.get("dlperf"),
            "dlperf_per_dphtotal": round(float(o.get("dlperf") or 0) / inst.dph_total, 4)
            if inst.dph_total
            else 0,
            "flops_per_dphtotal": round(float(o.get("total_flops") or 0) / inst.dph_total, 4)
            if inst.dph_total
            else 0,
            "total_flops": o.get("total_flops"),
            "score": o.get("score"),
            "rentable": True,
            "external": o.get("external", False),
            "hosting_type": o.get("hosting_type"),
            "logo": o.get("logo"),
            "webpage": None,
            "volume_info": [],
        }

    def _status_msg(self, inst: SimInstance, now: float) -> str | None:
        if inst.fault or inst.phase == "stopped":
            return inst.note or ("Instance stopped." if inst.phase == "stopped" else None)
        if inst.phase == "provisioning":
            return None
        if inst.phase == "created":
            return "Created container, waiting to pull image"
        if inst.phase == "loading" or (inst.phase == "running" and not inst.up):
            if inst.phase != "loading" or not inst.phase_duration:
                return f"Status: Downloaded newer image for {inst.image}"
            frac = min(0.999, max(0.0, (now - inst.phase_started) / inst.phase_duration))
            steps = [
                f"{layer}: {what}"
                for layer in _LAYERS
                for what in ("Pulling fs layer", "Downloading", "Download complete", "Pull complete")
            ]
            steps.append(f"Status: Downloaded newer image for {inst.image}")
            return steps[int(frac * len(steps))]
        if inst.phase == "scheduling":
            return "Waiting for the machine's GPUs to become free (scheduling)"
        if inst.phase == "rebooting":
            return "Rebooting container"
        if inst.phase == "recycling":
            return "Recycling: pulling image and recreating container"
        return f"success, running {inst.image.replace(':', '_')}/ssh"

    # ------------------------------------------------------------------ handlers: offers

    async def _h_bundles(
        self, request: web.Request, params: dict[str, str], body: dict[str, Any], key: str
    ) -> web.Response:
        if request.method == "GET":
            try:
                body = json.loads(request.query.get("q", "{}"))
            except ValueError:
                return _err(400, "invalid_request", "Invalid json in q")
            if not isinstance(body, dict):
                return _err(400, "invalid_request", "q must be a JSON object")
        return self._search(body)

    async def _h_search_asks(
        self, request: web.Request, params: dict[str, str], body: dict[str, Any], key: str
    ) -> web.Response:
        q = body.get("q", {})
        if not isinstance(q, dict):
            return _err(400, "invalid_request", "q must be a JSON object")
        return self._search(q)

    def _search(self, query: dict[str, Any]) -> web.Response:
        try:
            rows = search_offers(self.offers.values(), query)
        except QueryError as exc:
            return _err(400, "invalid_request", str(exc))
        return _json(200, {"offers": rows})

    # ------------------------------------------------------------------ handlers: create

    async def _h_create(
        self, request: web.Request, params: dict[str, str], body: dict[str, Any], key: str
    ) -> web.Response:
        offer_id = int(params["id"])
        offer = self.offers.get(offer_id)
        if offer is None or offer.get("rented") or not offer.get("rentable", True):
            return _err(
                404,
                "invalid_args",
                f"error 404/3603: no_such_ask Instance type by id {offer_id} is not available.",
                ask_id=offer_id,
            )

        def bad(msg: str, error: str = "invalid_args") -> web.Response:
            return _err(400, error, f"error 400/3467: Invalid args: {msg}")

        image = body.get("image")
        template = body.get("template_hash_id") or body.get("template_id")
        if not image and not template:
            return bad("image or template_hash_id is required")
        if image is not None and (not isinstance(image, str) or len(image) > 1024):
            return bad("image must be a string of at most 1024 characters")
        image = image or "vastai/base-image:@vastai-automatic-tag"
        try:
            disk = float(body["disk"]) if body.get("disk") is not None else 8.0
        except (TypeError, ValueError):
            return bad("disk must be a number")
        if disk < 8:
            return bad("disk must be at least 8 GB")
        if disk > float(offer.get("disk_space") or 1e9):
            return bad(f"disk {disk:g} GB exceeds the {offer.get('disk_space')} GB available")
        price = body.get("price")
        if price is not None:
            try:
                price = float(price)
            except (TypeError, ValueError):
                return _err(400, "invalid_price", "error 400/3468: Invalid bid price")
            if not 0.001 <= price <= 128:
                return _err(400, "invalid_price", "error 400/3468: bid price must be between 0.001 and 128")
        env_raw = body.get("env")
        if env_raw is None:
            env: dict[str, str] = {}
        elif isinstance(env_raw, dict):
            env = {str(k): "" if v is None else str(v) for k, v in env_raw.items()}
        elif isinstance(env_raw, str):
            try:
                env = _parse_env_string(env_raw)
            except ValueError:
                return bad("env string could not be parsed")
        else:
            return bad("env must be an object or a string")
        if any(len(v) > 256 for v in env.values()):
            return bad("env values are limited to 256 characters")
        if sum(len(k) + len(v) for k, v in env.items()) > 32768:
            return bad("env is limited to 32768 characters in total")
        onstart = body.get("onstart")
        args = body.get("args")
        args_str = body.get("args_str") or ""
        if onstart is not None and not isinstance(onstart, str):
            return bad("onstart must be a string")
        if args is not None and (not isinstance(args, list) or not all(isinstance(a, str) for a in args)):
            return bad("args must be a list of strings")
        if len(onstart or "") + len(" ".join(args or [])) + len(str(args_str)) > 4096:
            return bad("onstart + args are limited to 4096 characters")
        label = body.get("label")
        if label is not None and (not isinstance(label, str) or len(label) > 256):
            return bad("label is limited to 256 characters")
        runtype = body.get("runtype") or ("args" if args or args_str else "ssh")
        if not isinstance(runtype, str) or any(t not in _RUNTYPE_TOKENS for t in runtype.split()):
            return bad(f"unknown runtype {runtype!r}")
        target_state = body.get("target_state") or "running"
        if target_state not in ("running", "stopped"):
            return bad("target_state must be running or stopped")
        if self.create_credit_failure or (self._credit <= 0 and not self.debit_mode):
            return _err(
                self.create_credit_status,
                "insufficient_credit",
                "Insufficient credit: add credit to your account to rent instances.",
            )
        cannot_start = offer_id in self.unavailable_offers
        cancel_unavail = body.get("cancel_unavail")
        if cancel_unavail is None:
            cancel_unavail = price is None and target_state == "running"
        if cannot_start and cancel_unavail:
            return _err(
                410,
                "no_such_ask",
                f"error 410/3907: no_such_ask Instance type {offer_id} is no longer available.",
                ask_id=offer_id,
            )
        offer["rented"], offer["rentable"] = True, False
        now = self.clock.now()
        inst = self._new_instance(
            offer,
            label=label,
            image=image,
            env=env,
            onstart=onstart,
            disk=disk,
            runtype=runtype,
            price=price,
            created_at=now,
            args=args,
            template_hash_id=template if isinstance(template, str) else None,
        )
        if offer_id in self.boot_overrides:
            inst.boot_seconds = float(self.boot_overrides[offer_id])
        if cannot_start or target_state == "stopped":
            inst.intended = "stopped"
            inst.note = "Created stopped: the machine cannot start it now" if cannot_start else None
            self._set_plan(inst, now, [("stopped", None)])
        else:
            self._start_boot(inst, now)
        log.info("vast sim created instance_id=%s offer_id=%s label=%s", inst.id, offer_id, label)
        await self._settle()
        return _json(200, {"success": True, "new_contract": inst.id, "instance_api_key": inst.api_key})

    # ------------------------------------------------------------------ handlers: instances

    async def _h_list(
        self, request: web.Request, params: dict[str, str], body: dict[str, Any], key: str
    ) -> web.Response:
        q = request.query

        def load(name: str, default: Any) -> Any:
            if name not in q:
                return default
            return json.loads(q[name])

        try:
            filters = load("select_filters", {})
            order_by = load("order_by", [{"col": "id", "dir": "asc"}])
            select_cols = load("select_cols", ["*"])
        except ValueError as exc:
            return _err(400, "invalid_request", f"Error in query parameters: {exc}")
        try:
            limit = int(q.get("limit", "25"))
        except ValueError:
            return _err(400, "invalid_request", "Error in query parameters: limit must be an integer")
        limit = 5 if limit <= 0 else min(limit, 25)
        if (
            not isinstance(filters, dict)
            or not isinstance(order_by, list)
            or not isinstance(select_cols, list)
        ):
            return _err(400, "invalid_request", "Error in query parameters: wrong types")
        order: list[tuple[str, bool]] = []
        for item in order_by:
            if not isinstance(item, dict) or item.get("col") not in _STORED_COLUMNS:
                col = item.get("col") if isinstance(item, dict) else item
                return _err(
                    400, "invalid_request", f"Error in query parameters: {col} is not a valid order key"
                )
            direction = str(item.get("dir", "asc")).lower()
            if direction not in ("asc", "desc"):
                return _err(400, "invalid_request", f"Error in query parameters: bad direction {direction}")
            order.append((item["col"], direction == "desc"))
        if not any(c == "id" for c, _ in order):
            order.append(("id", False))
        rows = [self._render(i) for i in self.instances.values()]
        try:
            rows = filter_rows(rows, filters, allowed=lambda c: c in _STORED_COLUMNS)
        except QueryError as exc:
            return _err(400, "invalid_request", str(exc))
        rows = _sort_rows(rows, order)
        total = len(rows)
        label_counts = Counter((r.get("label") or "") for r in rows)
        token = q.get("after_token")
        if token:
            after = self._decode_token(token, len(order))
            if after is None:
                return _err(400, "invalid_token", "Invalid after_token")
            after_key = tuple(_key_part(v, d) for v, (_, d) in zip(after, order, strict=True))
            rows = [r for r in rows if tuple(_key_part(r.get(c), d) for c, d in order) > after_key]
        page, rest = rows[:limit], rows[limit:]
        next_token = self._encode_token([page[-1].get(c) for c, _ in order]) if rest and page else None
        if select_cols != ["*"]:
            page = [{c: r.get(c) for c in select_cols} for r in page]
        return _json(
            200,
            {
                "success": True,
                "instances_found": len(page),
                "total_instances": total,
                "label_counts": dict(label_counts),
                "next_token": next_token,
                "instances": page,
            },
        )

    def _encode_token(self, values: list[Any]) -> str:
        payload = base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")
        sig = hmac.new(self._token_secret, payload.encode(), hashlib.sha256).hexdigest()[:16]
        return f"{payload}.{sig}"

    def _decode_token(self, token: str, width: int) -> list[Any] | None:
        payload, _, sig = token.partition(".")
        good = hmac.new(self._token_secret, payload.encode(), hashlib.sha256).hexdigest()[:16]
        if not sig or not hmac.compare_digest(sig, good):
            return None
        try:
            values = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except ValueError:
            return None
        return values if isinstance(values, list) and len(values) == width else None

    async def _h_list_v0(
        self, request: web.Request, params: dict[str, str], body: dict[str, Any], key: str
    ) -> web.Response:
        if self.legacy_list == "gone":
            return _err(410, "gone", "This endpoint is deprecated. Use GET /api/v1/instances/ instead.")
        rows = [self._render(i) for i in sorted(self.instances.values(), key=lambda i: i.id)]
        return _json(200, {"instances_found": len(rows), "instances": rows})

    def _missing(self, instance_id: int, error: str = "no_such_instance") -> web.Response:
        return _err(404, error, f"Instance {instance_id} not found.")

    async def _h_show(
        self, request: web.Request, params: dict[str, str], body: dict[str, Any], key: str
    ) -> web.Response:
        inst = self.instances.get(int(params["id"]))
        if inst is None:
            if self.show_missing == "404":
                return self._missing(int(params["id"]))
            return _json(200, {"instances": None})
        return _json(200, {"instances": self._render(inst)})

    async def _h_manage(
        self, request: web.Request, params: dict[str, str], body: dict[str, Any], key: str
    ) -> web.Response:
        ident = int(params["id"])
        inst = self.instances.get(ident)
        if inst is None:
            return self._missing(ident)
        state, label = body.get("state"), body.get("label")
        if state is None and label is None:
            return _err(400, "invalid_args", "Nothing to change: give state and/or label.")
        if state is not None and state not in ("running", "stopped"):
            return _err(400, "invalid_args", f"Invalid state {state!r}.")
        if label is not None:
            if not isinstance(label, str):
                return _err(400, "invalid_args", "label must be a string")
            if len(label) > 1024:
                return _err(
                    400,
                    "label_too_long",
                    "Please limit label length to 1024 characters, ideally less than 128.",
                )
        now = self.clock.now()
        if state == "stopped" and (inst.intended != "stopped" or inst.phase != "stopped"):
            inst.intended = "stopped"
            inst.note = None
            inst.fault = None if inst.fault == "unknown" else inst.fault
            self._set_plan(inst, now, [("stopped", None)])
            self._tear_down(inst)
        elif state == "running" and (inst.intended != "running" or inst.phase == "stopped"):
            if self._credit <= 0 and not self.debit_mode:
                # Reference §7: stop/start without billing answer 400 missing_billing.
                return _err(400, "missing_billing", "No billing on the account (or no credit left) to start "
                            "the instance.")
            inst.intended, inst.note, inst.fault = "running", None, None
            hold = self._holds.pop(ident, self.scheduling_seconds if self.scheduling_seconds > 0 else 0.0)
            start = float(self.start_seconds if self.start_seconds is not None else 0.5 * self._boot(inst))
            plan: list[tuple[str, float | None]] = [("loading", start), ("running", None)]
            if hold is None or hold > 0:
                plan.insert(0, ("scheduling", hold))
            self._set_plan(inst, now, plan)
        if label is not None:
            inst.label = label
            await self._settle()
            return _json(200, {"success": True, "msg": f"label for {ident} set to '{label}'"})
        await self._settle()
        return _json(200, {"success": True})

    async def _h_reboot(
        self, request: web.Request, params: dict[str, str], body: dict[str, Any], key: str
    ) -> web.Response:
        return await self._restart(int(params["id"]), "rebooting")

    async def _h_recycle(
        self, request: web.Request, params: dict[str, str], body: dict[str, Any], key: str
    ) -> web.Response:
        return await self._restart(int(params["id"]), "recycling")

    async def _restart(self, ident: int, how: str) -> web.Response:
        inst = self.instances.get(ident)
        if inst is None:
            return _err(400, "invalid_id", f"Invalid instance id {ident}.")
        if inst.intended != "running" or inst.phase in ("stopped", "scheduling"):
            return _err(400, "invalid_args", f"Instance {ident} is not running.")
        now = self.clock.now()
        inst.fault, inst.note = None, None
        self._tear_down(inst)
        plan: list[tuple[str, float | None]] = [(how, self.reboot_seconds)]
        if how == "recycling":
            plan.append(("loading", 0.8 * self._boot(inst)))
        plan.append(("running", None))
        self._set_plan(inst, now, plan)
        await self._settle()
        return _json(200, {"success": True})

    async def _h_destroy(
        self, request: web.Request, params: dict[str, str], body: dict[str, Any], key: str
    ) -> web.Response:
        ident = int(params["id"])
        inst = self.instances.get(ident)
        if inst is None:
            return _err(404, "not_found", "Instance not found")
        self._advance(inst, self.clock.now())
        self._tear_down(inst)  # a bring-up still in flight sees the instance gone and undoes itself
        del self.instances[ident]
        self.destroyed[ident] = inst
        self._holds.pop(ident, None)
        offer = self.offers.get(int(inst.offer.get("id") or 0))
        if offer is not None and self.release_offers_on_destroy:
            offer["rented"], offer["rentable"] = False, True
        log.info("vast sim destroyed instance_id=%s", ident)
        await self._settle()
        return _json(200, {"success": True, "msg": f"destroying instance {ident}."})

    async def _h_request_logs(
        self, request: web.Request, params: dict[str, str], body: dict[str, Any], key: str
    ) -> web.Response:
        ident = int(params["id"])
        inst = self.instances.get(ident)
        if inst is None:
            return _err(404, "invalid_id", "Invalid instance id.")
        try:
            tail = int(str(body.get("tail", "1000")))
        except ValueError:
            return _err(400, "invalid_args", "tail must be a number")
        if str(body.get("daemon_logs", "")).lower() == "true":
            lines = [f"daemon: container {ident} state={inst.actual_status}", "daemon: heartbeat ok"]
        else:
            lines = list(inst.log_lines)
        pattern = body.get("filter")
        if pattern:
            try:
                rx = re.compile(str(pattern))
                lines = [ln for ln in lines if rx.search(ln)]
            except re.error:
                lines = [ln for ln in lines if str(pattern) in ln]
        lines = lines[-tail:] if tail > 0 else []
        token = secrets.token_hex(16)
        self._log_jobs[token] = _LogJob("\n".join(lines) + ("\n" if lines else ""), self.logs_not_ready_polls)
        return _json(
            200,
            {
                "success": True,
                "result_url": f"{self.base_url}/instance_logs/{token}.log",
                "msg": "Logs will be uploaded to the result_url shortly.",
            },
        )

    def _logs_fetch(self, token: str) -> web.Response:
        job = self._log_jobs.get(token)
        if job is None or job.polls_left > 0:
            if job is not None:
                job.polls_left -= 1
            body = (
                b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
                b"<Message>The specified key does not exist.</Message></Error>"
            )
            return web.Response(status=404, body=body, headers={"Content-Type": "application/xml"})
        return web.Response(status=200, body=job.text.encode(), headers={"Content-Type": "text/plain"})

    async def _h_ssh(
        self, request: web.Request, params: dict[str, str], body: dict[str, Any], key: str
    ) -> web.Response:
        ident = int(params["id"])
        inst = self.instances.get(ident)
        if inst is None:
            return self._missing(ident)
        ssh_key = body.get("ssh_key")
        if not isinstance(ssh_key, str) or not ssh_key.strip():
            return _err(400, "no_ssh_key", "No ssh key given.")
        if not ssh_key.strip().split()[0].startswith(("ssh-", "ecdsa-", "sk-")):
            return _err(400, "invalid_args", "Invalid SSH key format.")
        if ssh_key.strip() not in inst.ssh_keys:
            inst.ssh_keys.append(ssh_key.strip())
        return _json(200, {"success": True, "msg": "SSH key attached successfully"})

    async def _h_ssh_list(
        self, request: web.Request, params: dict[str, str], body: dict[str, Any], key: str
    ) -> web.Response:
        ident = int(params["id"])
        inst = self.instances.get(ident)
        if inst is None:
            return self._missing(ident)
        keys = [{"id": n + 1, "public_key": k} for n, k in enumerate(inst.ssh_keys)]
        return _json(200, {"success": True, "ssh_keys": json.dumps(keys)})

    async def _h_user(
        self, request: web.Request, params: dict[str, str], body: dict[str, Any], key: str
    ) -> web.Response:
        return _json(
            200,
            {
                "id": 424242,
                "username": "simulated",
                "fullname": "Simulated Vast User",
                "email": "sim@example.invalid",
                "email_verified": True,
                "credit": round(self._credit, 6),
                "balance": 0.0,
                "balance_threshold": 0.0,
                "balance_threshold_enabled": False,
                "billaddress_country": "US",
                "billed_expected": 0.0,
                "billed_verified": 0.0,
                "billing_creditonly": False,
                "can_pay": True,
                "has_billing": True,
                "has_payout": False,
                "last4": "4242",
                "paid_expected": 0.0,
                "paid_verified": 0.0,
                "ssh_key": None,
                "host_agreement_accepted": False,
                "key_id": 1,
                "sid": secrets.token_hex(8),
                "api_key": key,  # Vast echoes the key here; clients must drop it
            },
        )


# ---------------------------------------------------------------------------- CLI


async def _serve(args: argparse.Namespace) -> None:
    provider = None
    scratch = None
    if args.comfy:
        from socialsync.daemon.demo import DemoComfyProvider  # imports this module: not at the top

        scratch = tempfile.TemporaryDirectory(prefix="vast-sim-comfy-")
        provider = DemoComfyProvider(Path(scratch.name), step_time=args.step_time)
    sim = VastSim(
        api_key=args.api_key,
        catalog=default_catalog(args.offers, seed=args.seed),
        boot_seconds=args.boot_seconds,
        credit=args.credit,
        auto_tick=1.0,
        seed=args.seed,
        comfy_provider=provider,
    )
    await sim.start(args.host, args.port)
    print(sim.base_url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    try:
        await stop.wait()
    finally:
        await sim.stop()
        if provider is not None:
            await provider.close()
        if scratch is not None:
            scratch.cleanup()


def main(argv: list[str] | None = None) -> int:
    """``python -m socialsync.daemon.sim.vast``: run the fake Vast until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m socialsync.daemon.sim.vast", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument("--api-key", default=None, help="accept only this key (default: any non-empty key)")
    parser.add_argument("--offers", type=int, default=40, help="size of the generated offer catalogue")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--boot-seconds", type=float, default=45.0)
    parser.add_argument("--credit", type=float, default=25.0)
    parser.add_argument("--no-comfy", dest="comfy", action="store_false",
                        help="no ComfyUI simulator behind a running instance's 8188/tcp (default: one each)")
    parser.add_argument("--step-time", type=float, default=0.05, help="seconds per sampler step of those simulators")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:  # pragma: no cover
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
