"""The fleet: renting, tracking and destroying servers.

Launch is idempotent: the row and the label that names it are written before Vast is
asked, so a crash or an uncertain answer is reconciled by label, never rented twice.
One sync loop lists every instance of the account with one paged call per interval
(never one call per server), writes only what changed, appends status history and
publishes ``server_status``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from pydantic import TypeAdapter

from socialsync.common.errors import ErrorCode
from socialsync.common.events import SERVER_STATUS, ServerStatusData
from socialsync.common.money import money, to_decimal
from socialsync.common.servers import (
    ComfyAuth,
    Offer,
    OfferQuery,
    Server,
    ServerAttach,
    ServerCreate,
    ServerLaunched,
    ServerStatus,
    ServerUpdate,
    SetupStatus,
    StatusChange,
)
from socialsync.common.wire import now_iso
from socialsync.daemon.errors import (
    AppError,
    BadRequest,
    Conflict,
    ServerNotFound,
    Unavailable,
    UpstreamError,
)
from socialsync.daemon.events import EventBus
from socialsync.daemon.services.audit import AuditService
from socialsync.daemon.settings import Settings
from socialsync.daemon.store import servers as store
from socialsync.daemon.store.db import Database
from socialsync.daemon.vast import (
    Instance,
    VastAuthError,
    VastBadRequestError,
    VastClient,
    VastError,
    VastInsufficientCreditError,
    VastNotFoundError,
    VastOfferUnavailableError,
    VastRateLimitError,
    VastUnavailableError,
    VastUncertainError,
)

log = logging.getLogger(__name__)

TRANSITIONING = frozenset({ServerStatus.LAUNCHING, ServerStatus.LOADING})
ERROR_WORDS = re.compile(r"error|failed|failure|exception|traceback|oci runtime|permission denied", re.I)
REGIONS = {
    "north-america": ["US", "CA", "MX"],
    "south-america": ["BR", "AR", "CL", "CO", "PE"],
    "europe": ["GB", "DE", "FR", "NL", "SE", "NO", "FI", "PL", "CZ", "ES", "IT", "PT", "BE", "AT", "CH", "DK",
               "IE", "RO", "BG", "HU", "UA", "EE", "LV", "LT", "SI", "SK", "HR", "GR", "IS"],
    "asia-pacific": ["JP", "KR", "CN", "TW", "HK", "SG", "IN", "TH", "VN", "MY", "ID", "PH", "AU", "NZ"],
    "middle-east": ["AE", "IL", "TR", "SA", "QA"],
    "africa": ["ZA", "NG", "KE", "EG", "MA"],
}
ORDERS = {
    "price": ("dph_total", "asc"),
    "reliability": ("reliability", "desc"),
    "gpu_ram": ("gpu_ram", "desc"),
    "dlperf": ("dlperf", "desc"),
    "score": ("score", "desc"),
}
SERVER_LIST = TypeAdapter(list[Server])
UNCONFIRMED_GRACE = 180.0  # seconds a launch Vast never confirmed waits for its label to appear


def map_status(inst: Instance) -> ServerStatus:
    """Vast's ``actual_status``/``intended_status`` pair → our status. The user's intent
    to stop wins at once, so a stop does not flap back to running while Vast catches up."""
    actual = (inst.actual_status or "").lower() or None
    intended = (inst.intended_status or "").lower() or None
    if actual in ("destroyed", "terminated") or intended in ("destroyed", "terminated"):
        return ServerStatus.DESTROYED
    if actual in ("offline", "unknown"):
        return ServerStatus.OFFLINE
    if intended == "stopped":
        return ServerStatus.STOPPED
    if actual == "running":
        return ServerStatus.RUNNING
    if actual == "exited" or (actual != "running" and inst.status_msg and ERROR_WORDS.search(inst.status_msg)
                              and actual not in (None, "created", "loading")):
        return ServerStatus.ERROR
    if actual in ("stopped", "frozen"):
        return ServerStatus.LOADING if intended == "running" else ServerStatus.STOPPED
    if actual in ("loading", "created", "rebooting", "recycling", "scheduling"):
        return ServerStatus.LOADING
    return ServerStatus.LAUNCHING


def instance_fields(inst: Instance) -> dict[str, Any]:
    """What we keep of an instance row; None where Vast said nothing."""
    comfy = inst.public_endpoint(8188)
    direct = inst.public_endpoint(22)
    fields: dict[str, Any] = {
        "gpu": inst.gpu_name,
        "gpu_count": inst.num_gpus,
        "gpu_ram_mb": int(inst.gpu_ram) if inst.gpu_ram is not None else None,
        "cpu_cores": int(inst.cpu_cores_effective or inst.cpu_cores or 0) or None,
        "ram_gb": round(inst.cpu_ram / 1000) if inst.cpu_ram else None,
        "disk": inst.disk_space,
        "price_per_hour": money(inst.dph_total) if inst.dph_total is not None else None,
        "disk_cost_per_hour": money((inst.storage_cost or 0) * (inst.disk_space or 0) / (30 * 24))
        if inst.storage_cost is not None else None,
        "location": inst.geolocation,
        "public_ip": inst.public_ipaddr,
        "comfy_url": f"http://{comfy[0]}:{comfy[1]}" if comfy else None,
        "ssh_host": inst.ssh_host,
        "ssh_port": inst.ssh_port,
        "ssh_direct_host": direct[0] if direct else None,
        "ssh_direct_port": direct[1] if direct else None,
        "status_message": inst.status_msg,
    }
    return {k: v for k, v in fields.items() if v is not None or k in ("comfy_url", "status_message")}


def to_wire(row) -> Server:
    ssh = f"ssh root@{row['ssh_host']} -p {row['ssh_port']}" if row["ssh_host"] and row["ssh_port"] else None
    return Server(
        id=row["id"],
        vast_id=str(row["vast_id"]) if row["vast_id"] is not None else None,
        name=row["name"],
        gpu=row["gpu"],
        gpu_count=row["gpu_count"],
        cpu_cores=row["cpu_cores"],
        ram=row["ram_gb"],
        disk=int(row["disk"]) if row["disk"] is not None else None,
        price_per_hour=row["price_per_hour"],
        location=row["location"],
        status=row["status"],
        setup_status=row["setup_status"],
        status_message=row["setup_message"] if row["setup_status"] == "failed" else row["status_message"],
        server_url=row["comfy_url"],
        ssh_connection=ssh,
        comfy_auth=ComfyAuth.kind(row["comfy_auth"]),
        metadata=orjson.loads(row["metadata"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def offer_to_wire(offer) -> Offer:
    hourly = money(offer.dph_total or 0)
    return Offer(
        offer_id=str(offer.id),
        gpu=offer.gpu_name,
        gpu_count=offer.num_gpus,
        gpu_ram=round(offer.gpu_ram / 1000, 1) if offer.gpu_ram else None,
        cpu_cores=offer.cpu_cores_effective or offer.cpu_cores,
        ram=round(offer.cpu_ram / 1000, 1) if offer.cpu_ram else None,
        disk=offer.disk_space,
        price_per_hour=hourly,
        price_per_day=money(to_decimal(hourly) * 24),  # what the operator sees ×24, to the cent
        location=offer.geolocation,
        country=offer.country_code,
        reliability=offer.reliability2 if offer.reliability2 is not None else offer.reliability,
        verified=offer.verification == "verified" if offer.verification else None,
        direct_ports=offer.direct_port_count,
        internet_down=offer.inet_down,
        internet_up=offer.inet_up,
        dlperf=offer.dlperf,
        cuda=offer.cuda_max_good,
    )


def vast_error(exc: VastError) -> AppError:
    """A Vast failure as the API reports it (the key never appears: the client redacts)."""
    if isinstance(exc, VastOfferUnavailableError):
        return Conflict("Offer unavailable", exc.msg or "the offer is gone or already rented",
                        code=ErrorCode.OFFER_UNAVAILABLE)
    if isinstance(exc, VastAuthError):
        return UpstreamError("Vast refused our API key", exc.msg or "check VAST_API_KEY",
                             code=ErrorCode.VAST_AUTH_FAILED)
    if isinstance(exc, VastInsufficientCreditError):
        return Conflict("Insufficient Vast credit", exc.msg or "", code=ErrorCode.INSUFFICIENT_CREDIT)
    if isinstance(exc, VastBadRequestError):
        return BadRequest("Vast refused the request", exc.msg or "")
    if isinstance(exc, VastRateLimitError | VastUnavailableError):
        return Unavailable("Vast is unavailable", exc.msg or "try again shortly", code=ErrorCode.VAST_UNAVAILABLE)
    return UpstreamError("Vast error", exc.msg or type(exc).__name__, code=ErrorCode.VAST_ERROR)


@dataclass
class SyncReport:
    listed: int = 0
    pages: int = 0
    changed: int = 0
    adopted: list[int] = field(default_factory=list)
    vanished: list[int] = field(default_factory=list)
    timed_out: list[int] = field(default_factory=list)


StatusListener = Callable[[Any, Any], Awaitable[None] | None]
#: ``guard(offer, request)`` may raise an AppError to refuse a launch (budget, max price).
LaunchGuard = Callable[[Any, ServerCreate], Awaitable[None]]
#: ``guard(server_row)`` may raise an AppError to refuse starting a stopped server (budget).
StartGuard = Callable[[Any], Awaitable[None]]


class FleetService:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        audit: AuditService,
        settings: Settings,
        vast: VastClient | None,
        install_id: str,
        clock: Callable[[], float] = time.time,
    ):
        self.db = db
        self.bus = bus
        self.audit = audit
        self.settings = settings
        self.vast = vast
        self.install_id = install_id
        self.clock = clock
        self._lock = asyncio.Lock()
        self._kick = asyncio.Event()
        self._listeners: list[StatusListener] = []
        self._guards: list[LaunchGuard] = []
        self._start_guards: list[StartGuard] = []
        self._list_cache: dict[bool, tuple[int, bytes]] = {}
        # Rows as last read by `cached_row`; every write of a server row below drops its entry.
        self._rows: dict[int, Any] = {}
        self._rows_epoch = 0
        self._onstart_additions: list[Callable[[ServerCreate], str | None]] = []
        #: server id -> the JSON of its own ComfyUI credentials (the comfy_auth column)
        self.comfy_auth: dict[int, str] = {}
        self.last_sync: SyncReport | None = None

    async def load_comfy_auth(self) -> None:
        rows = await self.db.fetchall("SELECT id, comfy_auth FROM servers WHERE comfy_auth IS NOT NULL "
                                      "AND status != 'destroyed'")
        self.comfy_auth = {r["id"]: r["comfy_auth"] for r in rows}

    def _set_comfy_auth(self, server_id: int, stored: str | None) -> None:
        if stored is None:
            self.comfy_auth.pop(server_id, None)
        else:
            self.comfy_auth[server_id] = stored

    # -- labels --------------------------------------------------------------------
    @property
    def label_prefix(self) -> str:
        return f"{self.settings.vast.label_prefix}-{self.install_id}-"

    def label_for(self, row_id: int) -> str:
        return f"{self.label_prefix}{row_id}"

    def is_ours(self, label: str | None) -> bool:
        return bool(label) and label.startswith(self.label_prefix) and label[len(self.label_prefix):].isdigit()

    # -- listeners (readiness, generations) ----------------------------------------
    def add_listener(self, listener: StatusListener) -> None:
        """Called with (old_row, new_row) after every status or setup change."""
        self._listeners.append(listener)

    async def _notify(self, old, new) -> None:
        for listener in self._listeners:
            try:
                result = listener(old, new)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("fleet listener failed server_id=%s", new["id"])

    def add_launch_guard(self, guard: LaunchGuard) -> None:
        """Checked before anything is rented; the offer (with its price) is fetched once."""
        self._guards.append(guard)

    def add_start_guard(self, guard: StartGuard) -> None:
        """Checked before a stopped server is started again (it bills again once running)."""
        self._start_guards.append(guard)

    def add_onstart_addition(self, addition: Callable[[ServerCreate], str | None]) -> None:
        """Text appended to the onstart script of every launch (the dead-man switch)."""
        self._onstart_additions.append(addition)

    def _onstart(self, req: ServerCreate) -> str | None:
        parts = [req.on_start_script] + [add(req) for add in self._onstart_additions]
        return "\n".join(p for p in parts if p) or None

    def kick(self) -> None:
        """Sync soon (after a launch, stop or start)."""
        self._kick.set()

    def _need_vast(self) -> VastClient:
        if self.vast is None:
            raise Unavailable("Vast is not configured",
                              "set VAST_API_KEY (or run socialsyncd --demo for a simulated fleet)",
                              code=ErrorCode.VAST_UNAVAILABLE)
        return self.vast

    # -- reads ---------------------------------------------------------------------
    async def row(self, server_id: int):
        row = await store.get(self.db, server_id)
        if row is None:
            raise ServerNotFound(server_id)
        return row

    async def cached_row(self, server_id: int):
        """Like `row`, from memory while this service has not written that server since it
        was read. Every write of a server's status, setup, address or identity goes
        through this service (which drops the entry before and after it), so those
        columns are current; ``last_activity_at``, which generations write, may lag. For
        the generation hot path's readiness check, which must not cost a database read."""
        row = self._rows.get(server_id)
        if row is not None:
            return row
        epoch = self._rows_epoch
        row = await self.row(server_id)
        if epoch == self._rows_epoch:  # no write began meanwhile: what was read is current
            self._rows[server_id] = row
        return row

    def _forget_row(self, server_id: int) -> None:
        self._rows_epoch += 1
        self._rows.pop(server_id, None)

    async def list_servers(self, include_destroyed: bool = False) -> list[Server]:
        return [to_wire(r) for r in await store.list_all(self.db, include_destroyed)]

    async def list_servers_json(self, include_destroyed: bool = False) -> bytes:
        """The list as JSON, kept until the next committed write: every console and
        script polls it, and building it costs far more than reading it. The version is
        taken before the read, so a write landing during it only makes the entry stale
        for one more request, never wrong."""
        version = self.db.version
        hit = self._list_cache.get(include_destroyed)
        if hit is None or hit[0] != version:
            body = SERVER_LIST.dump_json(await self.list_servers(include_destroyed), by_alias=True)
            hit = self._list_cache[include_destroyed] = (version, body)
        return hit[1]

    async def get_server(self, server_id: int) -> Server:
        return to_wire(await self.row(server_id))

    async def history(self, server_id: int) -> list[StatusChange]:
        await self.row(server_id)
        return [StatusChange.model_validate(dict(r)) for r in await store.history(self.db, server_id)]

    async def search_offers(self, q: OfferQuery) -> list[Offer]:
        vast = self._need_vast()
        query: dict[str, Any] = {}
        if q.gpu_name:
            query["gpu_name"] = {"eq": q.gpu_name.replace("_", " ")}
        gpus = {k: v for k, v in (("gte", q.min_gpus), ("lte", q.max_gpus)) if v is not None}
        if gpus:
            query["num_gpus"] = gpus
        if q.min_gpu_ram is not None:
            query["gpu_ram"] = {"gte": q.min_gpu_ram * 1000}
        if q.max_price is not None:
            query["dph_total"] = {"lte": q.max_price}
        if q.min_reliability is not None:
            query["reliability"] = {"gte": q.min_reliability}
        if q.min_disk is not None:
            query["disk_space"] = {"gte": q.min_disk}
        if q.country:
            query["geolocation"] = {"in": [q.country.upper()]}
        elif q.region:
            if q.region not in REGIONS:
                raise BadRequest("Unknown region", f"region must be one of: {', '.join(REGIONS)}")
            query["geolocation"] = {"in": REGIONS[q.region]}
        order = None
        if q.order:
            key = q.order.lstrip("-")
            if key not in ORDERS:
                raise BadRequest("Unknown order", f"order must be one of: {', '.join(ORDERS)} (prefix - to reverse)")
            column, direction = ORDERS[key]
            if q.order.startswith("-"):
                direction = "desc" if direction == "asc" else "asc"
            order = [[column, direction]]
        try:
            offers = await vast.search_offers(query, order=order, limit=q.limit,
                                              allocated_storage=self.settings.vast.default_disk)
        except VastError as exc:
            raise vast_error(exc) from exc
        return [offer_to_wire(o) for o in offers if o.id is not None]

    # -- changes -------------------------------------------------------------------
    async def _change(self, row, fields: dict[str, Any], reason: str | None = None):
        """Write the changed columns of one server; on a status or setup change append
        history, publish ``server_status`` and tell the listeners."""
        changed = {k: v for k, v in fields.items() if row[k] != v}
        if not changed:
            return row
        now = now_iso()
        changed["updated_at"] = now
        status = changed.get("status", row["status"])
        setup = changed.get("setup_status", row["setup_status"])
        status_changed = "status" in changed or "setup_status" in changed
        if "status" in changed and status == ServerStatus.RUNNING and not row["running_since"]:
            changed["running_since"] = now
        if "status" in changed and status != ServerStatus.RUNNING:
            changed["running_since"] = None
        if "status" in changed and status in TRANSITIONING and row["status"] not in TRANSITIONING:
            changed["boot_started_at"] = now
        history = {"at": now, "status": status, "setup_status": setup, "reason": reason} if status_changed else None
        self._forget_row(row["id"])
        try:
            await store.update(self.db, row["id"], changed, history)
        finally:
            self._forget_row(row["id"])
        new = await store.get(self.db, row["id"])
        if status_changed:
            log.info("server status server_id=%d status=%s setup=%s reason=%s", row["id"], status, setup, reason)
            self.bus.publish(SERVER_STATUS, ServerStatusData(server_id=row["id"], status=status,
                                                             setup_status=setup, reason=reason))
            await self._notify(row, new)
        return new

    async def set_setup(self, server_id: int, setup: SetupStatus, reason: str | None = None,
                        metadata: dict[str, Any] | None = None):
        """Readiness reports here. Returns the new row, or None if the server is gone."""
        async with self._lock:
            row = await store.get(self.db, server_id)
            if row is None or row["status"] == ServerStatus.DESTROYED:
                return None
            fields: dict[str, Any] = {"setup_status": str(setup),
                                      "setup_message": reason if setup == SetupStatus.FAILED else None}
            if setup == SetupStatus.READY:
                fields["ready_at"] = now_iso()
            if metadata:
                fields["metadata"] = orjson.dumps({**orjson.loads(row["metadata"]), **metadata}).decode()
            return await self._change(row, fields, reason)

    async def launch(self, req: ServerCreate, actor: str) -> tuple[ServerLaunched, int]:
        vast = self._need_vast()
        try:
            offer_id = int(req.offer_id)
        except (TypeError, ValueError):
            raise BadRequest("Invalid offerId", "offerId must be a Vast offer id (a number)") from None
        offer = None
        if self._guards:
            try:
                offer = await vast.get_offer(offer_id)
            except VastError as exc:
                raise vast_error(exc) from exc
            if offer is None or offer.rented or offer.rentable is False:
                raise Conflict("Offer unavailable", f"offer {offer_id} is gone or already rented",
                               code=ErrorCode.OFFER_UNAVAILABLE)
            for guard in self._guards:
                await guard(offer, req)
        now = now_iso()
        image = req.image or self.settings.vast.default_image
        row = {
            "kind": "vast", "name": req.name or f"server-{offer_id}", "offer_id": offer_id, "image": image,
            "onstart": req.on_start_script, "disk": req.disk or self.settings.vast.default_disk,
            "status": str(ServerStatus.LAUNCHING), "setup_status": str(SetupStatus.PENDING),
            "metadata": "{}", "created_at": now, "updated_at": now, "last_activity_at": now,
            "boot_started_at": now, "comfy_auth": req.comfy_auth.stored() if req.comfy_auth else None,
        }
        server_id = await store.insert_with_history(self.db, row, "launch requested")
        self._set_comfy_auth(server_id, row["comfy_auth"])
        label = self.label_for(server_id)
        self._forget_row(server_id)
        await store.update(self.db, server_id, {"label": label})
        self._forget_row(server_id)
        env = dict(req.env or {})
        try:
            created = await vast.create_instance(
                offer_id, image=image, label=label, disk=row["disk"], env=env, onstart=self._onstart(req),
            )
        except VastUncertainError:
            # The request may have reached Vast: look for our label before anything else.
            found = await self._find_by_label(label)
            if found is None:
                log.warning("launch unconfirmed server_id=%d label=%s; the sync loop reconciles it", server_id, label)
                self.kick()
                self.bus.publish(SERVER_STATUS, ServerStatusData(server_id=server_id, status=ServerStatus.LAUNCHING,
                                                                 setup_status=SetupStatus.PENDING,
                                                                 reason="launch sent, not yet confirmed by Vast"))
                return ServerLaunched(id=server_id, vast_id=None, status=ServerStatus.LAUNCHING,
                                      message="Launch sent; Vast did not confirm yet, reconciling by label"), server_id
            self._forget_row(server_id)
            await store.update(self.db, server_id, {"vast_id": found.id})
            self._forget_row(server_id)
            vast_id = found.id
        except VastError as exc:
            self._forget_row(server_id)
            await store.delete(self.db, server_id)  # nothing was rented: leave no half-written row
            self._forget_row(server_id)
            raise vast_error(exc) from exc
        except BaseException:
            # Cancelled or crashed mid-call: keep the row; the label reconciles it.
            raise
        else:
            vast_id = created.instance_id
            self._forget_row(server_id)
            await store.update(self.db, server_id, {"vast_id": vast_id, "instance_api_key": created.instance_api_key})
            self._forget_row(server_id)
        self.kick()
        self.bus.publish(SERVER_STATUS, ServerStatusData(server_id=server_id, status=ServerStatus.LAUNCHING,
                                                         setup_status=SetupStatus.PENDING, reason="launched"))
        return ServerLaunched(id=server_id, vast_id=str(vast_id), status=ServerStatus.LAUNCHING,
                              message="Server launch initiated"), server_id

    async def _find_by_label(self, label: str) -> Instance | None:
        try:
            result = await self._need_vast().list_instances({"label": {"eq": label}})
        except VastError:
            return None
        return next((i for i in result.instances if i.label == label), None)

    async def update(self, server_id: int, patch: ServerUpdate) -> Server:
        row = await self.row(server_id)
        if row["status"] == ServerStatus.DESTROYED:
            raise Conflict("Server destroyed", f"server {server_id} was destroyed")
        if patch.status is not None:
            await self._power(row, patch.status)
            row = await self.row(server_id)
        fields: dict[str, Any] = {}
        if patch.name is not None:
            fields["name"] = patch.name
        if patch.metadata is not None:
            fields["metadata"] = orjson.dumps({**orjson.loads(row["metadata"]), **patch.metadata}).decode()
        if patch.setup_status is not None:
            fields["setup_status"] = str(patch.setup_status)
        if patch.comfy_auth is not None:
            fields["comfy_auth"] = patch.comfy_auth.stored()
        async with self._lock:
            old = await self.row(server_id)
            row = await self._change(old, fields, "updated through the API" if "setup_status" in fields else None)
            if row["comfy_auth"] != old["comfy_auth"]:
                self._set_comfy_auth(server_id, row["comfy_auth"])
                await self._notify(old, row)  # readiness probes again with them
        changed = [k for k in ("name", "metadata", "comfy_auth") if row[k] != old[k]]
        if changed and row["setup_status"] == old["setup_status"]:
            # Only the name, metadata or credentials changed: no history, but subscribers hear of it.
            self.bus.publish(SERVER_STATUS, ServerStatusData(
                server_id=server_id, status=row["status"], setup_status=row["setup_status"],
                reason="updated: " + ", ".join(k.replace("comfy_auth", "ComfyUI credentials") for k in changed)))
        return to_wire(row)

    async def _power(self, row, target: ServerStatus) -> None:
        if target not in (ServerStatus.STOPPED, ServerStatus.RUNNING):
            raise BadRequest("Invalid status", "status can only be set to 'stopped' or 'running'")
        if row["kind"] != "vast":
            raise Conflict("Not a Vast server", "an attached server cannot be stopped or started through Vast")
        if row["vast_id"] is None:
            raise Conflict("Launch not confirmed", "Vast has not confirmed this server yet")
        vast = self._need_vast()
        if target == ServerStatus.RUNNING and row["status"] == ServerStatus.STOPPED:
            for guard in self._start_guards:
                await guard(row)
        try:
            if target == ServerStatus.STOPPED:
                await vast.stop_instance(row["vast_id"])
            else:
                await vast.start_instance(row["vast_id"])
        except VastNotFoundError as exc:
            raise Conflict("Instance gone", f"Vast no longer has instance {row['vast_id']}") from exc
        except VastError as exc:
            raise vast_error(exc) from exc
        async with self._lock:
            row = await self.row(row["id"])
            new_status = ServerStatus.STOPPED if target == ServerStatus.STOPPED else ServerStatus.LOADING
            fields = {"status": str(new_status)}
            if row["setup_status"] != SetupStatus.PENDING:
                fields["setup_status"] = str(SetupStatus.PENDING)
            await self._change(row, fields, "stop requested" if target == ServerStatus.STOPPED else "start requested")
        self.kick()

    async def reboot(self, server_id: int) -> Server:
        row = await self.row(server_id)
        if row["kind"] != "vast" or row["vast_id"] is None or row["status"] == ServerStatus.DESTROYED:
            raise Conflict("Cannot reboot", "only a live Vast server can be rebooted")
        try:
            await self._need_vast().reboot_instance(row["vast_id"])
        except VastError as exc:
            raise vast_error(exc) from exc
        async with self._lock:
            row = await self.row(server_id)
            row = await self._change(row, {"status": str(ServerStatus.LOADING),
                                           "setup_status": str(SetupStatus.PENDING)}, "reboot requested")
        self.kick()
        return to_wire(row)

    async def destroy(self, server_id: int, reason: str = "destroy requested") -> None:
        row = await self.row(server_id)
        if row["status"] == ServerStatus.DESTROYED:
            return
        if row["kind"] == "vast" and row["vast_id"] is not None:
            try:
                await self._need_vast().destroy_instance(row["vast_id"])  # already gone counts as done
            except VastError as exc:
                raise vast_error(exc) from exc
        elif row["kind"] == "vast" and row["label"]:
            found = await self._find_by_label(row["label"])
            if found is not None and found.id is not None:
                try:
                    await self._need_vast().destroy_instance(found.id)
                except VastError as exc:
                    raise vast_error(exc) from exc
        async with self._lock:
            row = await self.row(server_id)
            await self._change(row, {"status": str(ServerStatus.DESTROYED), "destroyed_at": now_iso(),
                                     "comfy_url": row["comfy_url"] if row["kind"] == "attached" else None},
                               reason)

    async def attach(self, req: ServerAttach) -> Server:
        url = req.comfy_url.rstrip("/")
        if not re.match(r"^https?://[^\s/]+(/\S*)?$", url):
            raise BadRequest("Invalid comfyUrl", "comfyUrl must be an http(s) URL such as http://10.0.0.5:8188")
        now = now_iso()
        row = {
            "kind": "attached", "name": req.name, "comfy_url": url, "status": str(ServerStatus.RUNNING),
            "setup_status": str(SetupStatus.PENDING), "metadata": "{}", "created_at": now, "updated_at": now,
            "running_since": now, "last_activity_at": now,
            "comfy_auth": req.comfy_auth.stored() if req.comfy_auth else None,
        }
        server_id = await store.insert_with_history(self.db, row, "attached")
        self._set_comfy_auth(server_id, row["comfy_auth"])
        new = await self.row(server_id)
        self.bus.publish(SERVER_STATUS, ServerStatusData(server_id=server_id, status=ServerStatus.RUNNING,
                                                         setup_status=SetupStatus.PENDING, reason="attached"))
        await self._notify(None, new)
        return to_wire(new)

    # -- sync ----------------------------------------------------------------------
    async def sync_once(self) -> SyncReport:
        vast = self._need_vast()
        report = SyncReport()
        result = await vast.list_instances()
        report.listed, report.pages = len(result.instances), result.pages
        async with self._lock:
            rows = await store.list_all(self.db, include_destroyed=False)
            by_vast = {r["vast_id"]: r for r in rows if r["vast_id"] is not None}
            by_label = {r["label"]: r for r in rows if r["label"]}
            seen: set[int] = set()
            for inst in result.instances:
                if inst.id is None or not self.is_ours(inst.label):
                    continue
                row = by_vast.get(inst.id) or by_label.get(inst.label)
                if row is None:
                    destroyed = await store.by_label(self.db, inst.label)
                    if destroyed is not None:
                        await self._destroy_zombie(inst, destroyed["id"])
                        continue
                    report.adopted.append(await self._adopt(inst))
                    continue
                seen.add(row["id"])
                fields = instance_fields(inst)
                if row["vast_id"] is None:
                    fields["vast_id"] = inst.id
                status = map_status(inst)
                fields["status"] = str(status)
                if status != ServerStatus.RUNNING and row["setup_status"] != SetupStatus.PENDING:
                    fields["setup_status"] = str(SetupStatus.PENDING)
                reason = inst.status_msg if status in (ServerStatus.ERROR, ServerStatus.OFFLINE) else None
                new = await self._change(row, fields, reason or f"vast: {inst.actual_status or 'provisioning'}")
                if new is not row:
                    report.changed += 1
            now = self.clock()
            for row in rows:
                if row["kind"] != "vast" or row["id"] in seen:
                    continue
                age = now - _epoch(row["created_at"])
                if row["vast_id"] is not None:
                    await self._change(row, {"status": str(ServerStatus.DESTROYED), "destroyed_at": now_iso(),
                                             "comfy_url": None}, "instance no longer listed by Vast")
                    report.vanished.append(row["id"])
                    await self.audit.record("server.vanished", target_type="server", target_id=row["id"],
                                            details={"vastId": row["vast_id"], "previousStatus": row["status"]})
                elif age > UNCONFIRMED_GRACE and row["status"] != ServerStatus.ERROR:
                    await self._change(row, {"status": str(ServerStatus.ERROR)},
                                       "launch never confirmed by Vast")
                    await self.audit.record("server.launch_unconfirmed", target_type="server", target_id=row["id"],
                                            outcome="failure", details={"label": row["label"]})
        await self._enforce_boot_deadline(report)
        self.last_sync = report
        return report

    async def _adopt(self, inst: Instance) -> int:
        now = now_iso()
        status = map_status(inst)
        row = {
            "kind": "vast", "vast_id": inst.id, "label": inst.label, "name": f"adopted-{inst.id}",
            "image": inst.image_uuid, "status": str(status), "setup_status": str(SetupStatus.PENDING),
            "metadata": orjson.dumps({"adopted": True}).decode(), "created_at": now, "updated_at": now,
            "running_since": now if status == ServerStatus.RUNNING else None, "last_activity_at": now,
            "boot_started_at": now,
            **{k: v for k, v in instance_fields(inst).items() if v is not None},
        }
        server_id = await store.insert_with_history(self.db, row, "adopted from Vast")
        await self.audit.record("server.adopted", target_type="server", target_id=server_id,
                                details={"vastId": inst.id, "label": inst.label})
        self.bus.publish(SERVER_STATUS, ServerStatusData(server_id=server_id, status=status,
                                                         setup_status=SetupStatus.PENDING, reason="adopted"))
        await self._notify(None, await store.get(self.db, server_id))
        log.info("server adopted server_id=%d vast_id=%s", server_id, inst.id)
        return server_id

    async def _destroy_zombie(self, inst: Instance, target: int) -> None:
        """An instance whose row (``target``) we destroyed is still listed: it may still
        bill. Destroy again."""
        if map_status(inst) == ServerStatus.DESTROYED:
            return
        try:
            await self._need_vast().destroy_instance(inst.id)
            log.warning("destroyed a lingering instance vast_id=%s label=%s", inst.id, inst.label)
        except VastError as exc:
            log.warning("could not destroy lingering instance vast_id=%s error=%s", inst.id, exc)
            await self.audit.record("server.destroy_lingering", target_type="server", target_id=target,
                                    outcome="failure", details={"vastId": inst.id, "error": str(exc)[:200]})
        else:
            await self.audit.record("server.destroy_lingering", target_type="server", target_id=target,
                                    details={"vastId": inst.id, "label": inst.label})

    async def _enforce_boot_deadline(self, report: SyncReport) -> None:
        deadline = self.settings.vast.boot_deadline
        now = self.clock()
        for row in await store.list_vast_live(self.db):
            failed_boot = row["status"] in (ServerStatus.ERROR, ServerStatus.OFFLINE) and row["vast_id"] is not None
            if row["status"] not in TRANSITIONING and not failed_boot:
                continue
            started = row["boot_started_at"] or row["created_at"]
            if now - _epoch(started) <= deadline:
                continue
            if failed_boot and (not self.settings.vast.destroy_on_boot_timeout or await self.db.scalar(
                    "SELECT 1 FROM server_status_history WHERE server_id = ? AND status = 'running' AND at >= ? "
                    "LIMIT 1", (row["id"], started))):
                continue  # it ran since this boot began: a later failure, not a boot that never came up
            report.timed_out.append(row["id"])
            reason = f"not running after {deadline:g} s (boot deadline)"
            if not failed_boot:
                async with self._lock:
                    fresh = await store.get(self.db, row["id"])
                    await self._change(fresh, {"status": str(ServerStatus.ERROR)}, reason)
            await self.audit.record("server.boot_timeout", target_type="server", target_id=row["id"],
                                    details={"deadline": deadline, "destroy": self.settings.vast.destroy_on_boot_timeout,
                                             "status": str(row["status"])})
            if self.settings.vast.destroy_on_boot_timeout:
                try:
                    await self.destroy(row["id"], reason)
                    await self.audit.record("server.destroy", target_type="server", target_id=row["id"],
                                            details={"reason": reason})
                except AppError as exc:
                    log.warning("boot-deadline destroy failed server_id=%d error=%s", row["id"], exc.message)

    async def run(self) -> None:
        """The sync loop: faster while anything is transitioning, woken early by kick()."""
        while True:
            try:
                await self.sync_once()
            except VastError as exc:
                log.warning("sync failed error=%s", exc)
            except Exception:
                log.exception("sync failed")
            busy = await self.db.scalar(
                "SELECT count(*) FROM servers WHERE status IN ('launching', 'loading')")
            interval = (self.settings.vast.sync_interval_transitioning if busy
                        else self.settings.vast.sync_interval)
            self._kick.clear()
            try:
                await asyncio.wait_for(self._kick.wait(), interval)
                await asyncio.sleep(min(1.0, interval))  # let a burst of kicks settle into one sync
            except TimeoutError:
                pass


def _epoch(iso_text: str) -> float:
    return datetime.fromisoformat(iso_text).timestamp()
