"""Start a real daemon on a free loopback port for a test, and talk to it over HTTP."""

from __future__ import annotations

import socket
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from socialsync.daemon.app import create_app
from socialsync.daemon.settings import Settings, load_settings

GENEROUS_LIMITS = {"auth": 10_000, "server_management": 10_000, "generation": 10_000, "default": 10_000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Daemon:
    app: web.Application
    runner: web.AppRunner
    settings: Settings
    base_url: str
    admin_key: str

    def session(self, key: str | None = "admin", **kw: Any) -> aiohttp.ClientSession:
        """A client session, authenticated with ``key`` ("admin" = the admin key file)."""
        headers = dict(kw.pop("headers", {}))
        if key == "admin":
            key = self.admin_key
        if key:
            headers["Authorization"] = f"Bearer {key}"
        kw.setdefault("cookie_jar", aiohttp.CookieJar(unsafe=True))  # cookies for 127.0.0.1
        return aiohttp.ClientSession(base_url=self.base_url, headers=headers, **kw)


def make_settings(state_dir: Path, **overrides: Any) -> Settings:
    limits = {**GENEROUS_LIMITS, **overrides.pop("limits", {})}
    overrides.setdefault("port", free_port())
    overrides.setdefault("runtime_dir", state_dir / "run")
    return load_settings(None, host="127.0.0.1", state_dir=state_dir, limits=limits, **overrides)


@asynccontextmanager
async def running_daemon(state_dir: Path, **overrides: Any):
    settings = overrides.pop("settings", None) or make_settings(state_dir, **overrides)
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", settings.port)
        await site.start()
        yield Daemon(
            app, runner, settings, f"http://127.0.0.1:{settings.port}",
            settings.admin_key_path.read_text().strip(),
        )
    finally:
        await runner.cleanup()
