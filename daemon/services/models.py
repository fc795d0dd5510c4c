"""Models on the servers: what is installed (through ComfyUI), the curated catalogue,
downloads and which model is where.

A download never passes through the daemon: the server fetches the file itself.

- Over SSH (the usual way): a fixed command line runs the server's ``python3`` with a
  one-line bootstrap; the fetch program (``socialsync.daemon.data/fetch_model.py``) and
  the hub token follow on the channel's stdin, never in argv. Every argument is a
  validated value passed through ``shlex.quote``. The program resumes with HTTP Range
  into ``models/<folder>/.<file>.part``, checks sha256 and renames only then.
- Through ComfyUI-Manager's queue, for an attached server without SSH whose ComfyUI
  has Manager.

Progress is published as ``model_download`` events (at most ``event_interval`` apart per
download) and kept in ``model_downloads``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
import re
import shlex
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from socialsync.common.errors import ErrorCode
from socialsync.common.events import MODEL_DOWNLOAD
from socialsync.common.models_api import (
    MODEL_FOLDERS,
    NON_MODEL_FOLDERS,
    SHA256,
    AvailableModels,
    CatalogModel,
    DownloadAccepted,
    DownloadMethod,
    DownloadStatus,
    InstalledModel,
    ModelDownload,
    ModelDownloadCreate,
    ModelDownloadData,
    ModelPresence,
    PresenceEntry,
    PresenceServer,
    ServerModels,
    filename_from_url,
    filename_problem,
    folder_problem,
    looks_like_filename,
    text_problem,
    url_problem,
)
from socialsync.common.servers import ServerStatus, SetupStatus
from socialsync.common.wire import now_iso
from socialsync.daemon import __version__
from socialsync.daemon.comfy.client import ComfyClient
from socialsync.daemon.comfy.errors import ComfyError, ComfyNotFoundError
from socialsync.daemon.errors import BadRequest, Conflict, NotFound, ServerNotReady, Unavailable
from socialsync.daemon.events import EventBus
from socialsync.daemon.services.audit import AuditService
from socialsync.daemon.services.comfy_pool import ComfyPool
from socialsync.daemon.services.fleet import FleetService
from socialsync.daemon.services.ssh import (
    HostKeys,
    KeyAttacher,
    LazyIdentity,
    SshError,
    endpoints_of,
    run_program,
)
from socialsync.daemon.settings import ModelSettings, Settings
from socialsync.daemon.store import models as store

log = logging.getLogger(__name__)

DATA_PACKAGE = "socialsync.daemon.data"
#: The only code on the command line: read a length, then that many characters of program.
BOOTSTRAP = 'import sys;n=int(sys.stdin.readline());exec(compile(sys.stdin.read(n),"socialsync-fetch","exec"))'
LOOPBACK = ("localhost", "127.0.0.1", "::1")
INTERRUPTED = "interrupted: the daemon stopped; POST again to resume (the partial file stays on the server)"
SAFE_SETTING = re.compile(r"^/[A-Za-z0-9._/+-]*$")


# -- input ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadSpec:
    name: str
    description: str
    url: str
    folder: str
    filename: str
    sha256: str | None


def check_download(req: ModelDownloadCreate) -> DownloadSpec:
    """Every rule, before anything runs; all refusals in one 400 with the reasons."""
    problems: list[tuple[str, str]] = []
    for path, problem in (
        ("folder", folder_problem(req.folder)),
        ("url", url_problem(req.url)),
        ("name", text_problem(req.name, path_like=True)),
        ("description", text_problem(req.description) if req.description else None),
    ):
        if problem:
            problems.append((path, problem))
    sha = None
    if req.sha256 is not None:
        if SHA256.match(req.sha256):
            sha = req.sha256.lower()
        else:
            problems.append(("sha256", "must be 64 hexadecimal digits"))
    if req.filename is not None:
        filename, source = req.filename, "filename"
    elif looks_like_filename(req.name):
        filename, source = req.name, "name"
    else:
        filename, source = filename_from_url(req.url), "url"
    if not any(p == source for p, _ in problems):
        problem = filename_problem(filename)
        if problem:
            hint = " (the file name comes from the URL; give 'filename')" if source == "url" else ""
            problems.append(("filename" if source != "name" else "name", f"file name {problem}{hint}"))
    if problems:
        raise BadRequest(
            "Invalid model download",
            "; ".join(f"{path}: {reason}" for path, reason in problems),
            extra={"fields": [{"path": p, "message": r, "type": "value_error"} for p, r in problems]},
        )
    return DownloadSpec(req.name, req.description, req.url, req.folder, filename, sha)


def url_for_log(url: str) -> str:
    """scheme://host/path: never a query, fragment or credentials."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<bad url>"
    return urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))


def host_matches(host: str, hosts: Iterable[str]) -> bool:
    host = host.lower()
    return any(host == h.lower() or host.endswith("." + h.lower()) for h in hosts)


def authorization_for(url: str, models: ModelSettings) -> tuple[str | None, list[str]]:
    """The hub token for this URL (``Bearer …``) and the hosts it may go to, or (None, [])."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    for token, hosts in ((models.hf_token, models.hf_hosts), (models.civitai_token, models.civitai_hosts)):
        if token is None or not token.get_secret_value() or not host_matches(host, hosts):
            continue
        if parts.scheme != "https" and host not in LOOPBACK:
            return None, []  # a token never travels in clear text
        return f"Bearer {token.get_secret_value()}", list(hosts)
    return None, []


def fetch_command(models: ModelSettings, spec: DownloadSpec) -> str:
    """The whole command line: fixed text and quoted, validated values. No secret, and
    no URL (a signed URL's query is one): that goes over stdin with the options."""
    dest = posixpath.join(models.comfy_root.rstrip("/") or "/", "models", spec.folder)
    argv = [models.python, "-u", "-c", BOOTSTRAP, dest, spec.filename, spec.sha256 or "-"]
    return " ".join(shlex.quote(a) for a in argv)


def fetch_program() -> str:
    return resources.files(DATA_PACKAGE).joinpath("fetch_model.py").read_text(encoding="utf-8")


def fetch_stdin(program: str, options: dict[str, Any]) -> str:
    """What the channel's stdin carries: the program's length, the program, the options
    (with the token, if any) as one JSON line."""
    return f"{len(program)}\n{program}{json.dumps(options)}\n"


def load_catalog() -> list[CatalogModel]:
    raw = json.loads(resources.files(DATA_PACKAGE).joinpath("model_catalog.json").read_text(encoding="utf-8"))
    return [CatalogModel.model_validate(entry) for entry in raw["models"]]


# -- ComfyUI-Manager -----------------------------------------------------------------


class ManagerError(Exception):
    pass


class ManagerClient:
    """ComfyUI-Manager's model queue (reference §10): legacy ``/manager/...`` or v4 ``/v2/...``."""

    FLAVOURS = (("legacy", ""), ("v2", "/v2"))

    def __init__(self, comfy: ComfyClient, flavour: str):
        self.comfy = comfy
        self.flavour = flavour
        self.prefix = dict(self.FLAVOURS)[flavour]

    @classmethod
    async def probe(cls, comfy: ComfyClient) -> str | None:
        for flavour, prefix in cls.FLAVOURS:
            try:
                status, body = await cls._call(comfy, "GET", f"{prefix}/manager/queue/status",
                                               params={"client_id": comfy.client_id}, timeout=5)
            except ManagerError:
                continue
            if status == 200 and isinstance(body, dict):
                return flavour
        return None

    @staticmethod
    async def _call(comfy: ComfyClient, method: str, path: str, *, json_body: Any = None,
                    params: dict[str, str] | None = None, timeout: float = 15) -> tuple[int, Any]:
        try:
            async with comfy.session.request(
                method, comfy.url(path), json=json_body, params=params, headers=comfy.headers,
                timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False,
            ) as resp:
                text = await resp.text()
                try:
                    body: Any = json.loads(text) if text.strip() else None
                except ValueError:
                    body = text.strip()[:200]
                return resp.status, body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ManagerError(f"ComfyUI-Manager did not answer ({type(exc).__name__})") from None

    async def install(self, spec: DownloadSpec, ui_id: str) -> None:
        body = {"name": spec.name, "type": spec.folder, "base": "", "save_path": spec.folder, "url": spec.url,
                "filename": spec.filename, "ui_id": ui_id, "description": spec.description, "reference": spec.url}
        if self.flavour == "v2":
            body["client_id"] = self.comfy.client_id
        status, answer = await self._call(self.comfy, "POST", f"{self.prefix}/manager/queue/install_model",
                                          json_body=body)
        if status != 200:
            detail = answer if isinstance(answer, str) and answer else f"HTTP {status}"
            raise ManagerError(f"ComfyUI-Manager refused the model ({detail}); it installs only models of its own "
                               "catalogue; give the server SSH access for arbitrary URLs")
        status, _ = await self._call(self.comfy, "POST", f"{self.prefix}/manager/queue/start")
        if status not in (200, 201):
            raise ManagerError(f"ComfyUI-Manager did not start its queue (HTTP {status})")

    async def status(self) -> dict[str, Any]:
        status, body = await self._call(self.comfy, "GET", f"{self.prefix}/manager/queue/status",
                                        params={"client_id": self.comfy.client_id})
        if status != 200 or not isinstance(body, dict):
            raise ManagerError(f"ComfyUI-Manager queue status: HTTP {status}")
        return body


# -- the service ---------------------------------------------------------------------


class _Failed(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass
class _Live:
    """An active download, as the event stream sees it."""

    id: int
    server_id: int
    spec: DownloadSpec
    method: DownloadMethod
    actor: str
    manager: str | None = None
    status: DownloadStatus = DownloadStatus.QUEUED
    bytes_done: int = 0
    bytes_total: int | None = None
    rate: float | None = None
    error: str | None = None
    last_event: float = 0.0
    last_write: float = 0.0
    cancel_reason: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


def to_wire(row) -> ModelDownload:
    return ModelDownload.model_validate(dict(row))


class ModelService:
    def __init__(self, db, bus: EventBus, audit: AuditService, fleet: FleetService, pool: ComfyPool,
                 settings: Settings, identity: LazyIdentity, host_keys: HostKeys, attacher: KeyAttacher):
        self.db = db
        self.bus = bus
        self.audit = audit
        self.fleet = fleet
        self.pool = pool
        self.settings = settings
        self.models = settings.models
        self.identity = identity
        self.host_keys = host_keys
        self.attacher = attacher
        self.catalog = load_catalog()
        self.program = fetch_program()
        for name in ("comfy_root", "python"):
            value = getattr(self.models, name)
            if name == "comfy_root" and not SAFE_SETTING.match(value):
                raise ValueError(f"models.comfy_root must be an absolute path of plain characters: {value!r}")
            if name == "python" and not re.match(r"^[A-Za-z0-9._/+-]+$", value):
                raise ValueError(f"models.python must be a plain command name or path: {value!r}")
        self._live: dict[int, _Live] = {}
        self._slots: dict[int, asyncio.Semaphore] = {}
        self._refreshes: set[asyncio.Task[Any]] = set()
        fleet.add_listener(self._on_change)

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        failed = await store.fail_unfinished(self.db, "interrupted: the daemon restarted; POST again to resume "
                                                      "(the partial file stays on the server)", now_iso())
        if failed:
            log.warning("model downloads left unfinished by the last run marked failed ids=%s", failed)

    async def stop(self) -> None:
        tasks = [live.task for live in self._live.values() if live.task is not None]
        tasks += list(self._refreshes)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _on_change(self, old, new) -> None:
        # Runs inside the fleet's lock: schedule only. A server that just became ready
        # is asked for its models so the presence map is fresh.
        if new["setup_status"] == SetupStatus.READY and (old is None or old["setup_status"] != SetupStatus.READY):
            self._background(self._refresh_quietly(new["id"]))

    def _background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)

    async def _refresh_quietly(self, server_id: int) -> None:
        try:
            await self.installed(server_id)
        except Exception as exc:  # a background refresh must never raise
            log.debug("model list refresh failed server_id=%s error=%s", server_id, exc)

    # -- installed models ----------------------------------------------------------
    def _client(self, row) -> ComfyClient:
        return self.pool.client(row["id"], row["comfy_url"])

    async def _list_live(self, row, folders: list[str] | None = None) -> dict[str, list[InstalledModel]]:
        client = self._client(row)
        if folders is None:
            folders = [f for f in await client.model_folders() if f not in NON_MODEL_FOLDERS]
        gate = asyncio.Semaphore(6)

        async def one(folder: str) -> tuple[str, list[InstalledModel] | None]:
            async with gate:
                try:
                    files = await client.models_with_sizes(folder)
                except ComfyNotFoundError:
                    return folder, None
            return folder, [InstalledModel(name=f.name, size=f.size) for f in files]

        listed = await asyncio.gather(*(one(f) for f in folders))
        result = {folder: files for folder, files in listed if files is not None}
        await store.replace_server_models(
            self.db, row["id"], folders,
            [(folder, m.name, m.size) for folder, files in result.items() for m in files], now_iso(),
        )
        return result

    async def _cached(self, server_id: int) -> tuple[dict[str, list[InstalledModel]], str | None]:
        folders: dict[str, list[InstalledModel]] = {f: [] for f in MODEL_FOLDERS}
        seen = None
        for r in await store.server_models(self.db, server_id):
            folders.setdefault(r["folder"], []).append(InstalledModel(name=r["name"], size=r["size"]))
            seen = max(seen or r["seen_at"], r["seen_at"])
        return folders, seen

    async def installed(self, server_id: int) -> ServerModels:
        row = await self.fleet.row(server_id)
        reason = None
        if row["comfy_url"] and row["status"] == ServerStatus.RUNNING:
            try:
                folders = await self._list_live(row)
                return ServerModels(server_id=server_id, folders=folders,
                                    count=sum(len(v) for v in folders.values()), refreshed_at=now_iso())
            except ComfyError as exc:
                reason = str(exc)
                log.info("model list from cache server_id=%d: ComfyUI did not answer (%s)", server_id, exc)
        folders, seen = await self._cached(server_id)
        if seen is None:
            if reason is not None:
                raise Unavailable("ComfyUI unavailable", f"the server's ComfyUI did not answer: {reason}",
                                  code=ErrorCode.COMFY_UNAVAILABLE)
            raise ServerNotReady("Server not running", f"server {server_id} is {row['status']} and its models "
                                                       "were never listed")
        return ServerModels(server_id=server_id, folders=folders, count=sum(len(v) for v in folders.values()),
                            refreshed_at=seen, stale=True)

    async def available(self, server_id: int, folder: str | None = None, family: str | None = None
                        ) -> AvailableModels:
        await self.fleet.row(server_id)
        try:
            have = (await self.installed(server_id)).folders
        except (ServerNotReady, Unavailable):
            have = {}
        present = {(f, posixpath.basename(m.name)) for f, files in have.items() for m in files}
        grouped: dict[str, list[CatalogModel]] = {}
        for entry in self.catalog:
            if (folder and entry.folder != folder) or (family and entry.family != family):
                continue
            grouped.setdefault(entry.folder, []).append(
                entry.model_copy(update={"installed": (entry.folder, entry.filename) in present}))
        return AvailableModels(server_id=server_id, folders=grouped, count=sum(len(v) for v in grouped.values()))

    async def presence(self, refresh: bool = False) -> ModelPresence:
        if refresh:
            rows = [r for r in await self.fleet.list_servers() if r.setup_status == SetupStatus.READY]
            if rows:
                await asyncio.wait([asyncio.ensure_future(self._refresh_quietly(r.id)) for r in rows], timeout=15)
        entries: dict[tuple[str, str], PresenceEntry] = {}
        servers: dict[int, PresenceServer] = {}
        for r in await store.presence(self.db):
            entry = entries.setdefault((r["folder"], r["name"]), PresenceEntry(
                folder=r["folder"], name=r["name"], size=r["size"], server_ids=[]))
            entry.server_ids.append(r["server_id"])
            servers.setdefault(r["server_id"], PresenceServer(id=r["server_id"], name=r["server_name"]))
        return ModelPresence(models=list(entries.values()), servers=sorted(servers.values(), key=lambda s: s.id))

    # -- downloads: reads ----------------------------------------------------------
    def _current(self, row) -> ModelDownload:
        """The stored row, with the live progress of a running download over it (the
        table is written at most once a second)."""
        download = to_wire(row)
        live = self._live.get(download.id)
        if live is not None and download.status not in (DownloadStatus.COMPLETED, DownloadStatus.FAILED,
                                                          DownloadStatus.CANCELLED):
            download = download.model_copy(update={
                "status": live.status, "bytes_done": live.bytes_done, "bytes_total": live.bytes_total,
                "rate": live.rate, "error": live.error})
        return download

    async def downloads(self, server_id: int) -> list[ModelDownload]:
        await self.fleet.row(server_id)
        return [self._current(r) for r in await store.list_downloads(self.db, server_id)]

    async def download(self, server_id: int, download_id: int) -> ModelDownload:
        row = await store.get_download(self.db, download_id)
        if row is None or row["server_id"] != server_id:
            raise NotFound("Download not found", f"server {server_id} has no download {download_id}")
        return self._current(row)

    # -- downloads: start ----------------------------------------------------------
    async def _choose_method(self, row, spec: DownloadSpec) -> tuple[DownloadMethod, str | None]:
        if row["status"] == ServerStatus.DESTROYED:
            raise Conflict("Server destroyed", f"server {row['id']} was destroyed")
        if row["status"] != ServerStatus.RUNNING:
            raise ServerNotReady("Server not running", f"server {row['id']} is {row['status']}; downloads need "
                                                       "a running server")
        if endpoints_of(row, self.models.ssh_user):
            return DownloadMethod.SSH, None
        if row["kind"] == "vast":
            raise ServerNotReady("No SSH endpoint yet", "Vast has not given this server an SSH address yet; "
                                                        "try again in a moment")
        flavour = await ManagerClient.probe(self._client(row)) if row["comfy_url"] else None
        if flavour is None:
            raise Conflict("No way to download to this server",
                           "the server has no SSH access (set metadata.ssh = {host, port, user} and install our "
                           "public key) and its ComfyUI does not answer at /manager/queue/status or "
                           "/v2/manager/queue/status (ComfyUI-Manager is not installed)")
        if spec.sha256:
            raise Conflict("Cannot verify through ComfyUI-Manager",
                           "sha256 verification needs SSH access; ComfyUI-Manager cannot check a hash")
        return DownloadMethod.MANAGER, flavour

    async def start_download(self, server_id: int, req: ModelDownloadCreate, actor: str) -> DownloadAccepted:
        row = await self.fleet.row(server_id)
        spec = check_download(req)
        method, flavour = await self._choose_method(row, spec)
        active = await store.find_active(self.db, server_id, spec.folder, spec.filename)
        if active is not None:
            raise Conflict("Already downloading", f"download {active['id']} of {spec.folder}/{spec.filename} "
                                                  "is still running on this server")
        now = now_iso()
        download_id = await store.insert_download(self.db, {
            "server_id": server_id, "name": spec.name, "description": spec.description, "url": spec.url,
            "folder": spec.folder, "filename": spec.filename, "sha256": spec.sha256, "method": str(method),
            "status": str(DownloadStatus.QUEUED), "bytes_done": 0, "created_at": now, "updated_at": now,
        })
        live = _Live(download_id, server_id, spec, method, actor, manager=flavour)
        self._live[download_id] = live
        self._publish(live, force=True)
        live.task = asyncio.get_running_loop().create_task(self._run(live), name=f"model-download-{download_id}")
        log.info("model download queued download_id=%d server_id=%d method=%s folder=%s file=%s url=%s",
                 download_id, server_id, method, spec.folder, spec.filename, url_for_log(spec.url))
        download = to_wire(await store.get_download(self.db, download_id))
        return DownloadAccepted(download_id=download_id, status=DownloadStatus.QUEUED, method=method,
                                message=f"Download of {spec.filename} into {spec.folder} started "
                                        f"({'over SSH' if method == DownloadMethod.SSH else 'through ComfyUI-Manager'})",
                                download=download)

    async def cancel(self, server_id: int, download_id: int) -> ModelDownload:
        current = await self.download(server_id, download_id)
        live = self._live.get(download_id)
        if live is None or live.task is None or live.task.done():
            raise Conflict("Download not running", f"download {download_id} is {current.status}")
        live.cancel_reason = "cancelled by request (the partial file stays on the server; POST again to resume)"
        live.task.cancel()
        await asyncio.gather(live.task, return_exceptions=True)
        return await self.download(server_id, download_id)

    # -- downloads: progress -------------------------------------------------------
    def _publish(self, live: _Live, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - live.last_event < self.models.event_interval:
            return
        live.last_event = now
        self.bus.publish(MODEL_DOWNLOAD, ModelDownloadData(
            download_id=live.id, server_id=live.server_id, name=live.spec.name, folder=live.spec.folder,
            filename=live.spec.filename, status=live.status, bytes_done=live.bytes_done,
            bytes_total=live.bytes_total, rate=live.rate, error=live.error))

    async def _save(self, live: _Live, force: bool = False, **extra: Any) -> None:
        now = time.monotonic()
        if not force and now - live.last_write < 1.0:
            return
        live.last_write = now
        await store.update_download(self.db, live.id, {
            "status": str(live.status), "bytes_done": live.bytes_done, "bytes_total": live.bytes_total,
            "rate": live.rate, "error": live.error, "updated_at": now_iso(), **extra})

    async def _set_status(self, live: _Live, status: DownloadStatus, error: str | None = None) -> None:
        live.status = status
        live.error = error
        await self._save(live, force=True)
        self._publish(live, force=True)

    async def _on_remote(self, live: _Live, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind in ("start", "progress"):
            done = event.get("bytes", event.get("offset"))
            if isinstance(done, int):
                live.bytes_done = done
            total = event.get("total")
            if isinstance(total, int):
                live.bytes_total = total
            rate = event.get("rate")
            live.rate = float(rate) if isinstance(rate, int | float) else live.rate
            live.error = None
            self._publish(live, force=kind == "start")
            await self._save(live)
        elif kind == "retry":
            log.info("model download retrying download_id=%d attempt=%s reason=%s", live.id, event.get("attempt"),
                     event.get("message"))

    # -- downloads: running --------------------------------------------------------
    async def _run(self, live: _Live) -> None:
        slot = self._slots.setdefault(live.server_id, asyncio.Semaphore(max(1, self.models.max_per_server)))
        try:
            async with slot:
                await self._set_status(live, DownloadStatus.RUNNING)
                if live.method == DownloadMethod.SSH:
                    await self._run_ssh(live)
                else:
                    await self._run_manager(live)
            await self._finished(live, DownloadStatus.COMPLETED)
        except asyncio.CancelledError:
            if live.cancel_reason:
                await self._finished(live, DownloadStatus.CANCELLED, live.cancel_reason)
            else:
                await self._finished(live, DownloadStatus.FAILED, INTERRUPTED)
            raise
        except _Failed as exc:
            await self._finished(live, DownloadStatus.FAILED, exc.message)
        except Exception as exc:
            log.exception("model download crashed download_id=%d", live.id)
            await self._finished(live, DownloadStatus.FAILED, f"internal error: {type(exc).__name__}")
        finally:
            self._live.pop(live.id, None)

    async def _finished(self, live: _Live, status: DownloadStatus, error: str | None = None) -> None:
        if status == DownloadStatus.COMPLETED:
            live.rate = None
            try:
                row = await self.fleet.row(live.server_id)
                await self._list_live(row, [live.spec.folder])  # appears in the list now, no restart
            except Exception as exc:
                log.info("model list refresh after download failed server_id=%d error=%s", live.server_id, exc)
        await self._set_status(live, status, error)
        level = logging.INFO if status == DownloadStatus.COMPLETED else logging.WARNING
        log.log(level, "model download %s download_id=%d server_id=%d file=%s/%s bytes=%d%s", status, live.id,
                live.server_id, live.spec.folder, live.spec.filename, live.bytes_done,
                f" error={error}" if error else "")
        try:
            await self.audit.record(
                "model.download.finished", actor=live.actor, target_type="server", target_id=live.server_id,
                outcome="success" if status == DownloadStatus.COMPLETED else "failure",
                details={"downloadId": live.id, "folder": live.spec.folder, "filename": live.spec.filename,
                         "status": str(status), "bytes": live.bytes_done, "method": str(live.method),
                         **({"error": error} if error else {})})
        except Exception:
            log.exception("audit write failed download_id=%d", live.id)

    def _stdin(self, spec: DownloadSpec) -> str:
        authorization, hosts = authorization_for(spec.url, self.models)
        opts = {
            "url": spec.url, "authorization": authorization, "auth_hosts": hosts,
            "progress_interval": self.models.progress_interval, "stall_timeout": self.models.stall_timeout,
            "attempts": 3, "user_agent": f"socialsync/{__version__}",
        }
        return fetch_stdin(self.program, opts)

    async def _run_ssh(self, live: _Live) -> None:
        s = self.models
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.download_deadline
        command = fetch_command(s, live.spec)
        stdin = self._stdin(live.spec)
        last_error = "never tried"
        attempts = max(1, s.attempts)
        for attempt in range(1, attempts + 1):
            row = await self.fleet.row(live.server_id)
            if row["status"] != ServerStatus.RUNNING:
                raise _Failed(f"the server is {row['status']}")
            endpoints = endpoints_of(row, s.ssh_user)
            if not endpoints:
                raise _Failed("the server has no SSH endpoint any more")
            endpoint = endpoints[(attempt - 1) % len(endpoints)]
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _Failed(f"not finished within {s.download_deadline:g} s")
            await self.attacher.ensure(row)
            log.info("model download run download_id=%d server_id=%d attempt=%d endpoint=%s command=%s",
                     live.id, live.server_id, attempt, endpoint, command)
            try:
                result = await run_program(
                    endpoint, await self.identity.get(), self.host_keys, f"{row['id']}/{row['vast_id'] or 'attached'}",
                    command, stdin, lambda e: self._on_remote(live, e),
                    connect_timeout=s.ssh_connect_timeout, run_timeout=remaining,
                    stall_timeout=s.stall_timeout * 4 + 60,
                )
            except SshError as exc:
                last_error = str(exc)
            else:
                last = result.last or {}
                if result.exit_status == 0 and last.get("event") == "done":
                    if isinstance(last.get("bytes"), int):
                        live.bytes_done = live.bytes_total = last["bytes"]
                    return
                if last.get("event") == "error":
                    last_error = str(last.get("message") or last.get("code"))
                    if not last.get("retry"):
                        raise _Failed(last_error)
                elif result.exit_status == 127:
                    raise _Failed(f"{s.python} was not found on the server")
                else:
                    tail = _scrub(result.stderr_tail, self.settings.secrets())
                    last_error = f"the fetch program exited with status {result.exit_status}" + (
                        f": {tail.splitlines()[-1][:300]}" if tail.strip() else "")
            log.warning("model download attempt failed download_id=%d attempt=%d/%d error=%s", live.id, attempt,
                        attempts, last_error)
            if attempt < attempts:
                live.error = f"retrying: {last_error}"
                self._publish(live, force=True)
                await asyncio.sleep(min(60.0, s.retry_base * 2 ** (attempt - 1)))
        raise _Failed(f"gave up after {attempts} attempts: {last_error}")

    async def _run_manager(self, live: _Live) -> None:
        row = await self.fleet.row(live.server_id)
        client = self._client(row)
        manager = ManagerClient(client, live.manager or "legacy")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.models.download_deadline
        try:
            await manager.install(live.spec, ui_id=f"socialsync-{live.id}")
            idle_polls = 0
            while loop.time() < deadline:
                await asyncio.sleep(self.models.manager_poll)
                if await self._listed(client, live.spec):
                    return
                status = await manager.status()
                if not status.get("is_processing") and int(status.get("in_progress_count") or 0) == 0:
                    idle_polls += 1
                    if idle_polls >= 2:
                        break
        except ManagerError as exc:
            raise _Failed(str(exc)) from None
        if await self._listed(client, live.spec):
            return
        raise _Failed("ComfyUI-Manager finished without installing the file (it may have refused the URL: "
                      "see the server's log)")

    @staticmethod
    async def _listed(client: ComfyClient, spec: DownloadSpec) -> bool:
        try:
            names = await client.models(spec.folder)
        except ComfyError:
            return False
        return spec.filename in {posixpath.basename(n) for n in names}


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text
