"""Test doubles for model downloads: a file server on loopback (Range, gated paths,
faults) and a ComfyUI provider that gives each simulated instance its own models dir."""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

HF_TOKEN = "hf_FAKE_TOKEN_123"
CIVITAI_TOKEN = "civitai_FAKE_TOKEN_456"
TOKENS = (HF_TOKEN, CIVITAI_TOKEN)


def blob(size: int, seed: int = 1) -> bytes:
    """Deterministic bytes that are not all the same."""
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 32
    return bytes(out[:size])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Seen:
    path: str
    range: str | None
    authorization: str | None
    status: int = 0


@dataclass
class FileServer:
    """GET /<path> serves ``files[path]`` with HTTP Range. Paths with ``/resolve/`` behave
    like a gated Hugging Face repo: 401 without ``Authorization: Bearer <hf token>``."""

    files: dict[str, bytes] = field(default_factory=dict)
    token: str = HF_TOKEN
    chunk: int = 64 * 1024
    delay: float = 0.004
    requests: list[Seen] = field(default_factory=list)
    break_after: dict[str, int] = field(default_factory=dict)  # path → drop the socket at this offset, once
    ignore_range: bool = False
    hold_at: dict[str, int] = field(default_factory=dict)  # path → stop at this offset until released
    released: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hf_url(self) -> str:
        """The same server under another name: the daemon is told this host is a hub."""
        return f"http://localhost:{self.port}"

    async def start(self) -> FileServer:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._get)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        self.released.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FileServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _get(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        seen = Seen(path, request.headers.get("Range"), request.headers.get("Authorization"))
        self.requests.append(seen)
        if "/resolve/" in path and seen.authorization != f"Bearer {self.token}":
            seen.status = 401
            return web.Response(status=401, text="Invalid credentials")
        data = self.files.get(path)
        if data is None:
            seen.status = 404
            return web.Response(status=404)
        start = 0
        if seen.range and not self.ignore_range:
            start = int(seen.range.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                seen.status = 416
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
        status = 206 if start else 200
        seen.status = status
        headers = {"Content-Length": str(len(data) - start), "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        resp = web.StreamResponse(status=status, headers=headers)
        await resp.prepare(request)
        limit = self.break_after.get(path)
        hold = self.hold_at.get(path)
        for pos in range(start, len(data), self.chunk):
            if hold is not None and pos >= hold:
                await self.released.wait()
                hold = None
            piece = data[pos:pos + self.chunk]
            await resp.write(piece)
            if limit is not None and pos + len(piece) >= limit:  # an absolute offset in the file
                del self.break_after[path]
                assert request.transport is not None
                request.transport.abort()
                return resp
            await asyncio.sleep(self.delay)
        await resp.write_eof()
        return resp


def leftovers(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith("."))
