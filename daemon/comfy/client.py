"""Async client of one ComfyUI server's HTTP API (reference: comfyui-api.md §2-§4, §8).

One `ComfyClient` per server, all sharing the daemon's `aiohttp.ClientSession`.

- Every call has a timeout and reports `on_call(endpoint, outcome, seconds)` once per
  attempt (`outcome` is `ok`, `http_<status>`, `timeout` or `connection_error`).
- Transport errors, 429 and 5xx are retried with jittered backoff (Retry-After honoured);
  4xx never are. `POST /prompt` always carries a prompt id chosen here, and before it
  is re-posted after a transport error the client looks in `/queue` and `/history` so
  one prompt is never queued twice; a 500 from `/prompt` is not retried.
- No `Origin` header is sent (ComfyUI answers 403 to a mismatching one). Optional basic
  auth or bearer token for servers behind an authenticating proxy, and the base URL may
  carry a path prefix (`https://proxy.example/comfy/abc`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import os
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TypeVar
from uuid import uuid4

import aiohttp
import orjson
from multidict import CIMultiDictProxy
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from yarl import URL

from socialsync.daemon.comfy.errors import (
    ComfyError,
    ComfyHTTPError,
    ComfyNotFoundError,
    ComfyPromptRejected,
    ComfyUnavailableError,
)
from socialsync.daemon.comfy.models import (
    DownloadedOutput,
    ModelFile,
    QueuedPrompt,
    QueueItem,
    QueueState,
    UploadedImage,
    ViewBody,
    ViewResult,
    iter_output_files,
)

__all__ = ["ComfyClient", "OnCall"]

log = logging.getLogger(__name__)

OnCall = Callable[[str, str, float], None]

_WRITE_BUFFER = 1024 * 1024  # flush downloaded bytes to disk in ~1 MiB thread hops


def _open_part(part: Path, digest: Any, data: bytes) -> BinaryIO:
    """Blocking: the folder, the `.part` file and its first bytes, in one thread hop."""
    part.parent.mkdir(parents=True, exist_ok=True)
    fh = open(part, "wb")  # closed by _close_part, or by the caller on failure
    try:
        _write_part(fh, digest, data)
    except BaseException:
        fh.close()
        raise
    return fh


def _write_part(fh: BinaryIO, digest: Any, data: bytes) -> None:
    digest.update(data)  # hashlib lets go of the GIL for large buffers
    fh.write(data)


def _close_part(fh: BinaryIO, digest: Any, data: bytes, part: Path, target: Path) -> None:
    """Blocking: the last bytes, close, rename into place, in one thread hop."""
    try:
        if data:
            _write_part(fh, digest, data)
    finally:
        fh.close()
    os.replace(part, target)


def _save(data: bytes, target: Path) -> str:
    """Blocking: write a whole body to `target` atomically (via `.part`); its sha256 hex."""
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(part, "wb") as fh:
            fh.write(data)
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


class _Response(NamedTuple):
    status: int
    body: bytes
    content_type: str
    headers: CIMultiDictProxy[str]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def _dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except (orjson.JSONEncodeError, TypeError):  # ints beyond 64 bits etc.
        return json.dumps(obj).encode()


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)  # raises ValueError for real garbage


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _retry_after(headers: CIMultiDictProxy[str]) -> float | None:
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _combo_options(spec: Any) -> list[str]:
    """Choices of a combo input spec: `[[a, b], {...}]` or newer `["COMBO", {"options": [...]}]`."""
    if isinstance(spec, list) and spec:
        if isinstance(spec[0], list):
            return [str(x) for x in spec[0]]
        if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
            return [str(x) for x in spec[1].get("options", [])]
    return []


T = TypeVar("T")

def _is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, ComfyUnavailableError)


class ComfyClient:
    """Client of one ComfyUI server. Cheap to create; owns no connection of its own."""

    def __init__(
        self,
        base_url: str,
        *,
        session: aiohttp.ClientSession,
        client_id: str,
        auth: aiohttp.BasicAuth | tuple[str, str] | None = None,
        bearer_token: str | None = None,
        timeout: float = 30,
        on_call: OnCall | None = None,
        attempts: int = 3,
        retry_wait: tuple[float, float] = (0.2, 2.0),
    ) -> None:
        url = URL(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        if auth is not None and bearer_token is not None:
            raise ValueError("give either basic auth or a bearer token, not both")
        self._base = str(url).rstrip("/")
        self._session = session
        self._client_id = client_id
        self._headers: dict[str, str] = {}
        if isinstance(auth, aiohttp.BasicAuth):
            self._headers["Authorization"] = auth.encode()
        elif auth is not None:  # aiohttp 3.14 deprecates BasicAuth: a (login, password) pair works too
            login, password = auth
            self._headers["Authorization"] = "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()
        elif bearer_token is not None:
            self._headers["Authorization"] = f"Bearer {bearer_token}"
        self._timeout_s = float(timeout)
        self._timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        # Downloads (large files): bound each read, not the whole transfer.
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout_s,
                                                     sock_read=self._timeout_s)
        self._on_call = on_call
        self._attempts = max(1, attempts)
        self._retry_wait = retry_wait
        self._posting: dict[str, int] = {}  # prompt id -> POST /prompt calls in flight
        self._posted: OrderedDict[str, float] = OrderedDict()  # prompt id -> when its last POST ended

    # ------------------------------------------------------------------ basics

    @property
    def base_url(self) -> str:
        return self._base

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def session(self) -> aiohttp.ClientSession:
        return self._session

    @property
    def timeout(self) -> float:
        return self._timeout_s

    @property
    def headers(self) -> dict[str, str]:
        """Auth headers sent with every request (also used for the websocket)."""
        return dict(self._headers)

    def url(self, path: str) -> URL:
        """Absolute URL of an API path such as `/history/<quoted id>` (prefix kept)."""
        return URL(self._base + path, encoded=True)

    def ws_url(self) -> str:
        """`ws(s)://host:port[/prefix]/ws?clientId=<client_id>`."""
        url = URL(self._base)
        scheme = "wss" if url.scheme == "https" else "ws"
        return str(url.with_scheme(scheme).with_path(url.path.rstrip("/") + "/ws").with_query(clientId=self._client_id))

    def post_activity(self, prompt_id: str) -> float | None:
        """`math.inf` while `queue_prompt` for this id is in flight, else the `time.monotonic()`
        at which the last one ended (None if this client never posted it). Lets the watcher
        tell "not queued yet" from "gone"."""
        if prompt_id in self._posting:
            return math.inf
        return self._posted.get(prompt_id)

    def __repr__(self) -> str:
        return f"ComfyClient({self._base!r}, client_id={self._client_id!r})"

    # ------------------------------------------------------------- machinery

    def _report(self, endpoint: str, outcome: str, seconds: float) -> None:
        if self._on_call is None:
            return
        try:
            self._on_call(endpoint, outcome, seconds)
        except Exception:  # a metrics hook must never break a call
            log.exception("on_call hook failed endpoint=%s", endpoint)

    def _delay(self, attempt_number: int, exc: BaseException | None) -> float:
        """The pause after failed attempt number ``attempt_number``: exponential with
        jitter, at least the server's ``Retry-After`` (capped at a minute)."""
        initial, maximum = self._retry_wait
        exp = min(maximum, initial * (2 ** (attempt_number - 1)))
        delay = exp / 2 + (exp / 2) * (os.urandom(1)[0] / 255)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            delay = max(delay, min(float(retry_after), 60.0))
        return delay

    async def _retrying(self, call: Callable[[int], Awaitable[T]], retry: Callable[[BaseException], bool] | None,
                        ) -> T:
        """``call(attempt_number)`` until it succeeds, up to ``attempts`` times while
        ``retry(exception)`` says so (once when ``retry`` is None). The first attempt
        runs as a plain call: tenacity is entered only after a retriable failure, for
        the remaining attempts (the same numbers, pauses and final exception)."""
        try:
            return await call(1)
        except Exception as exc:
            if retry is None or self._attempts <= 1 or not retry(exc):
                raise
            first = exc
        await asyncio.sleep(self._delay(1, first))

        def wait(state: RetryCallState) -> float:
            return self._delay(state.attempt_number + 1, state.outcome.exception() if state.outcome else None)

        async for attempt in AsyncRetrying(stop=stop_after_attempt(self._attempts - 1), wait=wait,
                                           retry=retry_if_exception(retry), reraise=True):
            with attempt:
                return await call(attempt.retry_state.attempt_number + 1)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self,
        method: str,
        path: str,
        endpoint: str,
        *,
        params: dict[str, str] | None = None,
        data: Any = None,
        json_body: bool = False,
    ) -> _Response:
        headers = dict(self._headers)
        if json_body:
            headers["Content-Type"] = "application/json"
        start = time.monotonic()
        outcome = "connection_error"
        try:
            async with self._session.request(
                method,
                self.url(path),
                params=params,
                data=data,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                outcome = "ok" if resp.status < 400 else f"http_{resp.status}"
                return _Response(resp.status, body, resp.content_type, resp.headers)
        except TimeoutError as exc:
            outcome = "timeout"
            raise ComfyUnavailableError(f"{endpoint} on {self._base}: timed out after {self._timeout_s:g}s") from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise ComfyUnavailableError(f"{endpoint} on {self._base}: {type(exc).__name__}: {exc}") from exc
        except aiohttp.ClientError as exc:
            outcome = "client_error"
            raise ComfyError(f"{endpoint} on {self._base}: {type(exc).__name__}: {exc}") from exc
        finally:
            self._report(endpoint, outcome, time.monotonic() - start)

    def _raise_for_status(self, resp: _Response, endpoint: str) -> None:
        if resp.status < 300:
            return
        if resp.status == 404:
            raise ComfyNotFoundError(resp.text, endpoint=endpoint)
        if resp.status == 429 or resp.status >= 500:
            raise ComfyUnavailableError(
                f"{endpoint} on {self._base}: HTTP {resp.status}"
                + (f": {resp.text.strip()[:200]}" if resp.body else ""),
                status=resp.status,
                retry_after=_retry_after(resp.headers),
            )
        raise ComfyHTTPError(resp.status, resp.text, endpoint=endpoint)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        endpoint: str | None = None,
        params: dict[str, str] | None = None,
        body: Any = None,
        form: Callable[[], aiohttp.FormData] | None = None,
        retry: bool = True,
    ) -> _Response:
        endpoint = endpoint or f"{method} {path}"
        payload = _dumps(body) if body is not None else None

        async def call(_: int) -> _Response:
            resp = await self._attempt(
                method,
                path,
                endpoint,
                params=params,
                data=form() if form is not None else payload,
                json_body=payload is not None,
            )
            self._raise_for_status(resp, endpoint)
            return resp

        return await self._retrying(call, _is_unavailable if retry else None)

    def _json(self, resp: _Response, endpoint: str) -> Any:
        try:
            return _loads(resp.body)
        except ValueError as exc:
            raise ComfyHTTPError(resp.status, resp.text, endpoint=f"{endpoint} (not JSON)") from exc

    async def _get_json(self, path: str, *, endpoint: str | None = None, params: dict[str, str] | None = None,
                        retry: bool = True) -> Any:
        endpoint = endpoint or f"GET {path}"
        resp = await self._request("GET", path, endpoint=endpoint, params=params, retry=retry)
        return self._json(resp, endpoint)

    # ---------------------------------------------------------------- prompts

    async def queue_prompt(
        self,
        graph: dict[str, Any],
        *,
        prompt_id: str | None = None,
        extra_data: dict[str, Any] | None = None,
        front: bool = False,
        number: float | None = None,
        partial_execution_targets: list[str] | None = None,
    ) -> QueuedPrompt:
        """`POST /prompt` with our `client_id` and a fixed prompt id (idempotent on retry).

        Raises `ComfyPromptRejected` for a 400 validation error.
        """
        pid = prompt_id or str(uuid4())
        body: dict[str, Any] = {"prompt": graph, "client_id": self._client_id, "prompt_id": pid}
        if extra_data:
            body["extra_data"] = dict(extra_data)
        if front:
            body["front"] = True
        if number is not None:
            body["number"] = number
        if partial_execution_targets is not None:
            body["partial_execution_targets"] = list(partial_execution_targets)
        payload = _dumps(body)
        self._posting[pid] = self._posting.get(pid, 0) + 1
        try:
            return await self._post_prompt(pid, payload)
        finally:
            left = self._posting.pop(pid) - 1
            if left:
                self._posting[pid] = left
            self._posted[pid] = time.monotonic()
            self._posted.move_to_end(pid)
            while len(self._posted) > 10000:
                self._posted.popitem(last=False)

    async def _post_prompt(self, pid: str, payload: bytes) -> QueuedPrompt:
        endpoint = "POST /prompt"

        def retriable(exc: BaseException) -> bool:
            # A 500 from /prompt is ComfyUI choking on our body: re-posting cannot help.
            return isinstance(exc, ComfyUnavailableError) and exc.status != 500

        async def call(attempt_number: int) -> QueuedPrompt:
            if attempt_number > 1:
                found = await self._find_prompt(pid)
                if found is not None:
                    log.info("prompt already queued before the retry prompt_id=%s", pid)
                    return found
            resp = await self._attempt("POST", "/prompt", endpoint, data=payload, json_body=True)
            if resp.status == 400:
                try:
                    parsed = _loads(resp.body)
                except ValueError:
                    parsed = None
                if isinstance(parsed, dict) and "error" in parsed:
                    raise ComfyPromptRejected.from_body(parsed)
            self._raise_for_status(resp, endpoint)
            data = self._json(resp, endpoint)
            if not isinstance(data, dict):
                raise ComfyHTTPError(resp.status, resp.text, endpoint=endpoint)
            node_errors = data.get("node_errors")
            return QueuedPrompt(
                prompt_id=str(data.get("prompt_id") or pid),
                number=data.get("number", 0),
                node_errors=node_errors if isinstance(node_errors, dict) else {},
            )

        return await self._retrying(call, retriable)

    async def _find_prompt(self, prompt_id: str) -> QueuedPrompt | None:
        """Whether a prompt id already reached the server (queue first, then history)."""
        state = await self._queue_state(retry=False)
        item = state.find(prompt_id)
        if item is not None:
            return QueuedPrompt(prompt_id, item.number, {})
        entry = await self._history_entry(prompt_id, retry=False)
        if entry is not None:
            raw = entry.get("prompt")
            number = raw[0] if isinstance(raw, list) and raw and isinstance(raw[0], int | float) else 0
            return QueuedPrompt(prompt_id, number, {})
        return None

    async def _history_entry(self, prompt_id: str, *, retry: bool = True) -> dict[str, Any] | None:
        data = await self._get_json(f"/history/{_q(prompt_id)}", endpoint="GET /history/{id}", retry=retry)
        if not isinstance(data, dict) or not data:
            return None
        entry = data.get(prompt_id)
        if entry is None and len(data) == 1:
            entry = next(iter(data.values()))
        return entry if isinstance(entry, dict) else None

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of a prompt (`{prompt, outputs, status, meta}`), or None.

        None means unknown, still pending, still running, or deleted from the queue.
        """
        return await self._history_entry(prompt_id)

    async def history_all(self, *, max_items: int | None = None, offset: int | None = None) -> dict[str, Any]:
        params: dict[str, str] = {}
        if max_items is not None:
            params["max_items"] = str(max_items)
        if offset is not None:
            params["offset"] = str(offset)
        data = await self._get_json("/history", params=params or None)
        return data if isinstance(data, dict) else {}

    async def delete_history(self, prompt_ids: Iterable[str]) -> None:
        await self._request("POST", "/history", body={"delete": list(prompt_ids)})

    async def clear_history(self) -> None:
        await self._request("POST", "/history", body={"clear": True})

    async def _queue_state(self, *, retry: bool = True) -> QueueState:
        data = await self._get_json("/queue", retry=retry)
        if not isinstance(data, dict):
            data = {}
        running = [QueueItem.from_wire(x) for x in data.get("queue_running") or []]
        pending = [QueueItem.from_wire(x) for x in data.get("queue_pending") or []]
        pending.sort(key=lambda item: (item.number, item.prompt_id))
        return QueueState(running=running, pending=pending)

    async def queue(self) -> QueueState:
        """`GET /queue` with pending items sorted by priority number."""
        return await self._queue_state()

    async def queue_remaining(self) -> int:
        """`GET /prompt`: pending + running count."""
        data = await self._get_json("/prompt")
        try:
            return int(data["exec_info"]["queue_remaining"])
        except (KeyError, TypeError, ValueError):
            return 0

    async def delete_from_queue(self, prompt_ids: Iterable[str]) -> None:
        """Remove pending prompts (a running one is untouched: use `interrupt`)."""
        ids = list(prompt_ids)
        if ids:
            await self._request("POST", "/queue", body={"delete": ids})

    async def clear_queue(self) -> None:
        await self._request("POST", "/queue", body={"clear": True})

    async def interrupt(self, prompt_id: str | None = None) -> None:
        """Interrupt `prompt_id` if it is the one running (or whatever runs, if None)."""
        await self._request("POST", "/interrupt", body={"prompt_id": prompt_id} if prompt_id else {})

    # ----------------------------------------------------------------- files

    async def view(
        self,
        filename: str,
        subfolder: str = "",
        type: str = "output",
        dest: Path | str | None = None,
        *,
        chunk_size: int = 256 * 1024,
    ) -> ViewResult:
        """Stream `GET /view` into `dest` (atomically, via `<dest>.part`).

        Returns `(bytes_written, sha256 hex, content_type)`. 404 → `ComfyNotFoundError`.
        A small file costs one thread hop (hash, write, rename together).
        """
        if dest is None:
            raise TypeError("view() needs a destination path")
        target = Path(dest)
        body = await self.fetch(filename, subfolder, type, spill=target, in_memory=_WRITE_BUFFER,
                                chunk_size=chunk_size)
        if body.data is None:
            assert body.sha256 is not None
            return ViewResult(body.size, body.sha256, body.content_type)
        sha = await asyncio.to_thread(_save, body.data, target)
        return ViewResult(body.size, sha, body.content_type)

    async def fetch(
        self,
        filename: str,
        subfolder: str = "",
        type: str = "output",
        *,
        spill: Path | str,
        in_memory: int = 8 * 1024 * 1024,
        chunk_size: int = 256 * 1024,
    ) -> ViewBody:
        """`GET /view`, kept in memory when the body is at most `in_memory` bytes (no
        thread hop at all: the caller checks, hashes and stores it in one), else
        streamed to `spill` (atomically, via `<spill>.part`) and hashed on the way, in
        ~1 MiB thread hops. 404 → `ComfyNotFoundError`."""
        params = {"filename": filename, "type": type}
        if subfolder:
            params["subfolder"] = subfolder
        target = Path(spill)
        return await self._retrying(lambda _: self._fetch_once(params, target, in_memory, chunk_size), _is_unavailable)

    async def _fetch_once(self, params: dict[str, str], target: Path, in_memory: int, chunk_size: int) -> ViewBody:
        endpoint = "GET /view"
        part = target.with_name(target.name + ".part")
        start = time.monotonic()
        outcome = "connection_error"
        fh = None
        spilled = done = False
        try:
            async with self._session.get(
                self.url("/view"), params=params, headers=self._headers, timeout=self._stream_timeout,
                allow_redirects=False,
            ) as resp:
                if resp.status >= 300:
                    outcome = f"http_{resp.status}"
                    self._raise_for_status(
                        _Response(resp.status, await resp.read(), resp.content_type, resp.headers), endpoint
                    )
                digest = hashlib.sha256()
                written = 0
                buf = bytearray()
                try:
                    async for chunk in resp.content.iter_chunked(chunk_size):
                        written += len(chunk)
                        buf += chunk
                        if fh is None and len(buf) > in_memory:
                            spilled = True
                            fh = await asyncio.to_thread(_open_part, part, digest, bytes(buf))
                            buf.clear()
                        elif fh is not None and len(buf) >= _WRITE_BUFFER:
                            await asyncio.to_thread(_write_part, fh, digest, bytes(buf))
                            buf.clear()
                    if fh is None:
                        done = True
                        outcome = "ok"
                        return ViewBody(written, resp.content_type, bytes(buf), None)
                    closing, fh = fh, None
                    await asyncio.to_thread(_close_part, closing, digest, bytes(buf), part, target)
                finally:
                    if fh is not None:
                        await asyncio.to_thread(fh.close)
                done = True
                outcome = "ok"
                return ViewBody(written, resp.content_type, None, digest.hexdigest())
        except TimeoutError as exc:
            outcome = "timeout"
            raise ComfyUnavailableError(f"{endpoint} on {self._base}: timed out") from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise ComfyUnavailableError(f"{endpoint} on {self._base}: {type(exc).__name__}: {exc}") from exc
        finally:
            self._report(endpoint, outcome, time.monotonic() - start)
            if spilled and not done:
                await asyncio.to_thread(part.unlink, missing_ok=True)

    async def download_outputs(
        self, outputs: dict[str, Any], dest_dir: Path | str, *, include_temp: bool = False
    ) -> list[DownloadedOutput]:
        """Download every file of a history `outputs` dict into `dest_dir`.

        Local names are `<subfolder with / as _>_<filename>` (or just the filename),
        so nothing escapes `dest_dir`. Temp outputs (PreviewImage) are skipped unless asked.
        """
        base = Path(dest_dir)
        result: list[DownloadedOutput] = []
        for f in iter_output_files(outputs):
            if f.type == "temp" and not include_temp:
                continue
            local = Path(f.filename).name
            if f.subfolder:
                local = f.subfolder.replace("\\", "/").strip("/").replace("/", "_") + "_" + local
            if local in ("", ".", "..") or local.startswith("."):
                local = "_" + local
            path = base / local
            written, sha, ctype = await self.view(f.filename, f.subfolder, f.type, path)
            result.append(DownloadedOutput(f, path, written, sha, ctype))
        return result

    async def upload_image(
        self,
        path_or_bytes: Path | str | bytes,
        name: str,
        *,
        type: str = "input",
        subfolder: str = "",
        overwrite: bool = False,
    ) -> UploadedImage:
        """`POST /upload/image`; the server may rename (`name (1).png`) on a clash."""
        if isinstance(path_or_bytes, bytes):
            content = path_or_bytes
        else:
            content = await asyncio.to_thread(Path(path_or_bytes).read_bytes)

        def form() -> aiohttp.FormData:
            fd = aiohttp.FormData()
            fd.add_field("image", content, filename=name, content_type="application/octet-stream")
            fd.add_field("type", type)
            fd.add_field("subfolder", subfolder)
            fd.add_field("overwrite", "true" if overwrite else "false")
            return fd

        resp = await self._request("POST", "/upload/image", form=form)
        data = self._json(resp, "POST /upload/image")
        if not isinstance(data, dict):
            raise ComfyHTTPError(resp.status, resp.text, endpoint="POST /upload/image")
        return UploadedImage(str(data.get("name", name)), str(data.get("subfolder", "")), str(data.get("type", type)))

    # ---------------------------------------------------------- introspection

    async def object_info(self, node_class: str | None = None) -> dict[str, Any] | None:
        """All node classes (`{class: info}`), or the info of one class (None if unknown)."""
        if node_class is None:
            data = await self._get_json("/object_info")
            return data if isinstance(data, dict) else {}
        data = await self._get_json(f"/object_info/{_q(node_class)}", endpoint="GET /object_info/{class}")
        if not isinstance(data, dict):
            return None
        info = data.get(node_class)
        return info if isinstance(info, dict) else None

    async def samplers_and_schedulers(self) -> tuple[list[str], list[str]]:
        """`sampler_name` and `scheduler` choices of this server's KSampler."""
        info = await self.object_info("KSampler")
        if info is None:
            raise ComfyError(f"{self._base} has no KSampler node")
        inputs = info.get("input", {})
        required = {**inputs.get("optional", {}), **inputs.get("required", {})}
        return _combo_options(required.get("sampler_name")), _combo_options(required.get("scheduler"))

    async def model_folders(self) -> list[str]:
        data = await self._get_json("/models")
        return [str(x) for x in data] if isinstance(data, list) else []

    async def models(self, folder: str) -> list[str]:
        """Files of a model folder (`SDXL/x.safetensors` for subfolders); 404 → `ComfyNotFoundError`."""
        data = await self._get_json(f"/models/{_q(folder)}", endpoint="GET /models/{folder}")
        return [str(x) for x in data] if isinstance(data, list) else []

    async def models_with_sizes(self, folder: str) -> list[ModelFile]:
        """Like `models` but with sizes from `/experiment/models/{folder}` when the server has it."""
        try:
            data = await self._get_json(f"/experiment/models/{_q(folder)}", endpoint="GET /experiment/models/{folder}")
        except ComfyNotFoundError:
            return [ModelFile(name) for name in await self.models(folder)]
        files: list[ModelFile] = []
        for entry in data if isinstance(data, list) else []:
            if isinstance(entry, dict) and "name" in entry:
                size = entry.get("size")
                modified = entry.get("modified")
                files.append(
                    ModelFile(
                        str(entry["name"]),
                        int(size) if isinstance(size, int | float) else None,
                        float(modified) if isinstance(modified, int | float) else None,
                    )
                )
        return sorted(files, key=lambda f: f.name)

    async def embeddings(self) -> list[str]:
        data = await self._get_json("/embeddings")
        return [str(x) for x in data] if isinstance(data, list) else []

    async def system_stats(self) -> dict[str, Any]:
        data = await self._get_json("/system_stats")
        return data if isinstance(data, dict) else {}

    async def features(self) -> dict[str, Any]:
        """`GET /features`; `{}` on servers that do not have it."""
        try:
            data = await self._get_json("/features")
        except ComfyNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    async def ping(self) -> bool:
        """One quick `GET /system_stats` without retries: True when the server answers 200."""
        try:
            await self._request("GET", "/system_stats", retry=False)
        except ComfyError:
            return False
        return True
