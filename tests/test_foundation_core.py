"""The foundation's parts seen from outside: package, settings, store, admin key, process."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import aiohttp
import pytest
from harness import free_port, running_daemon

from socialsync.daemon.api import all_routes
from socialsync.daemon.api.openapi import build_openapi
from socialsync.daemon.settings import load_settings
from socialsync.daemon.store.db import Database, Migration, MigrationError, builtin_migrations

ROOT = Path(__file__).resolve().parent.parent


async def test_admin_key_file_is_private_and_stable(tmp_path):
    state = tmp_path / "state"
    async with running_daemon(state) as d:
        path = d.settings.admin_key_path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        first = path.read_text().strip()
        async with d.session() as s, s.get("/api/auth/me") as r:
            assert (await r.json())["principal"]["role"] == "admin"
    async with running_daemon(state) as d:
        assert d.settings.admin_key_path.read_text().strip() == first


async def test_migrations_once_and_idempotent(tmp_path):
    state = tmp_path / "state"
    for _ in range(2):
        async with running_daemon(state):
            pass
    con = sqlite3.connect(state / "socialsync.db")
    rows = con.execute("SELECT version, name FROM schema_migrations").fetchall()
    assert rows == [(m.version, m.name) for m in builtin_migrations()]
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"servers", "server_status_history", "generations", "generation_images", "workflows", "models",
            "audit_logs", "users", "sessions", "api_keys"} <= tables
    con.close()


async def test_failed_migration_leaves_database_as_it_was(tmp_path):
    path = tmp_path / "db.sqlite"
    good = Migration(1, "one", "CREATE TABLE a (x INTEGER);")
    db = await Database.open(path, [good])
    await db.close()
    bad = Migration(2, "two", "CREATE TABLE b (y INTEGER);\nINSERT INTO a VALUES (1);\nTHIS IS NOT SQL;")
    with pytest.raises(MigrationError, match="002_two"):
        await Database.open(path, [good, bad])
    con = sqlite3.connect(path)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "b" not in tables
    assert con.execute("SELECT count(*) FROM a").fetchone()[0] == 0
    assert con.execute("SELECT version FROM schema_migrations").fetchall() == [(1,)]
    con.close()


def test_settings_precedence(tmp_path, monkeypatch):
    config = tmp_path / "socialsync.toml"
    config.write_text('port = 1111\nhost = "127.0.0.2"\n[limits]\ngeneration = 7\ndefault = 70\n'
                      '[vast]\nbase_url = "http://toml"\n')
    s = load_settings(config)
    assert (s.port, s.host, s.limits.generation, s.vast.base_url) == (1111, "127.0.0.2", 7, "http://toml")
    monkeypatch.setenv("SOCIALSYNC_PORT", "2222")
    monkeypatch.setenv("SOCIALSYNC_LIMITS__GENERATION", "8")
    monkeypatch.setenv("VAST_API_KEY", "vast-from-env")
    s = load_settings(config)
    assert (s.port, s.limits.generation, s.limits.default) == (2222, 8, 70)
    assert s.vast.api_key.get_secret_value() == "vast-from-env" and "vast-from-env" not in repr(s)
    s = load_settings(config, port=3333)
    assert s.port == 3333
    monkeypatch.setenv("CONFIGURATION_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "st"))
    s = load_settings(None)
    assert s.limits.generation == 8 and s.state_dir == tmp_path / "st"
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.toml")


def test_openapi_committed_copy_is_fresh():
    committed = json.loads((ROOT / "daemon" / "api" / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(build_openapi(all_routes()))), (
        "regenerate: python -m socialsync.daemon.api.openapi > daemon/api/openapi.json")


async def test_openapi_served_and_covers_every_route(daemon, admin):
    async with admin.get("/api/openapi.json") as r:
        doc = await r.json()
    assert doc["openapi"].startswith("3.1")
    for spec in all_routes():
        assert spec.method.lower() in doc["paths"][spec.path], spec.path


def test_wheel_has_every_subpackage_and_no_bare_ones(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("socialsync-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("socialsync-")}
    assert tops == {"socialsync"}, tops
    for folder in ("daemon", "tui", "common"):
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.relative_to(ROOT).as_posix()
            assert f"socialsync/{rel}" in names, rel
    assert "socialsync/daemon/store/migrations/001_initial.sql" in names
    assert "socialsync/common/py.typed" in names


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited with {proc.returncode}: {proc.stderr.read()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("daemon did not listen")


async def test_real_process_starts_serves_and_stops_on_sigterm(tmp_path):
    port = free_port()
    env = {**os.environ, "SOCIALSYNC_VAST__API_KEY": "vast-secret-xyz"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "socialsync.daemon", "--state-dir", str(tmp_path / "s"), "--port", str(port)],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )
    try:
        wait_for_port(port, proc)
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/api/health") as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert "listening" in err and "stopped" in err
    key = (tmp_path / "s" / "admin.key").read_text().strip()
    assert key not in err and "vast-secret-xyz" not in err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "socialsync.daemon", "--help"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    for flag in ("--config", "--host", "--port", "--state-dir", "--demo"):
        assert flag in out


async def test_a_committed_write_is_visible_to_the_next_read_despite_overlapping_reads(tmp_path):
    """Reads once kept a cursor open across an await; overlapping reads then pinned an old
    WAL snapshot, and a row just written read back as missing (a 500 under load)."""
    import asyncio

    db = await Database.open(tmp_path / "db.sqlite", [Migration(1, "t", "CREATE TABLE t (x INTEGER);")])
    done = False

    async def noise() -> None:
        while not done:
            await db.fetchall("SELECT x FROM t")
            await db.fetchone("SELECT count(*) FROM t")

    tasks = [asyncio.create_task(noise()) for _ in range(8)]
    try:
        for i in range(300):
            await db.execute("INSERT INTO t VALUES (?)", (i,))
            assert (await db.fetchone("SELECT count(*) FROM t"))[0] == i + 1
    finally:
        done = True
        await asyncio.gather(*tasks)
        await db.close()
