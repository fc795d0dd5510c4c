"""The foundation over real HTTP: error bodies, auth on every registered route, rate
limits and their headers, API keys, sessions and the audit trail."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys

import pytest
from harness import running_daemon

from socialsync.daemon import keys

ERROR_KEYS = {"error", "details", "code"}


async def error_of(resp, status: int, code: str) -> dict:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert ERROR_KEYS <= body.keys(), body
    assert body["code"] == code, body
    assert resp.headers["Content-Type"].startswith("application/json")
    return body


async def make_key(admin, role: str, name: str | None = None) -> str:
    async with admin.post("/api/api-keys", json={"name": name or f"{role}-key", "role": role}) as r:
        assert r.status == 201, await r.text()
        return (await r.json())["key"]


def add_user(state_dir, name: str, password: str, role: str = "operator") -> None:
    subprocess.run(
        [sys.executable, "-m", "socialsync.daemon", "--state-dir", str(state_dir), "user", "add", name,
         "--role", role, "--password-stdin"],
        input=password + "\n", text=True, check=True, capture_output=True, timeout=60,
    )


async def test_error_classes(daemon, admin):
    async with daemon.session(None) as anon:
        await error_of(await anon.get("/api/api-keys"), 401, "UNAUTHORIZED")
    async with daemon.session("ssk_not-a-real-key") as bad:
        await error_of(await bad.get("/api/api-keys"), 401, "INVALID_API_KEY")
    viewer = await make_key(admin, "viewer")
    async with daemon.session(viewer) as v:
        await error_of(await v.post("/api/api-keys", json={"name": "x"}), 403, "FORBIDDEN")
    # invalid JSON, then invalid fields with their paths
    body = await error_of(
        await admin.post("/api/api-keys", data=b"{nope", headers={"Content-Type": "application/json"}),
        400, "VALIDATION_ERROR")
    assert "JSON" in body["error"]
    body = await error_of(await admin.post("/api/api-keys", json={"name": "", "role": "king", "x": 1}),
                          400, "VALIDATION_ERROR")
    paths = {f["path"] for f in body["fields"]}
    assert paths == {"name", "role", "x"}
    assert "role" in body["details"] and "name" in body["details"]
    await error_of(await admin.get("/api/audit-logs?limit=9999"), 400, "VALIDATION_ERROR")
    await error_of(await admin.delete("/api/api-keys/424242"), 404, "NOT_FOUND")
    await error_of(await admin.delete("/api/api-keys/abc"), 404, "NOT_FOUND")
    await error_of(await admin.get("/api/no-such-thing"), 404, "NOT_FOUND")
    body = await error_of(await admin.put("/api/health"), 405, "METHOD_NOT_ALLOWED")
    assert "GET" in body["details"]
    key_id = (await (await admin.get("/api/api-keys")).json())[-1]["id"]
    async with admin.delete(f"/api/api-keys/{key_id}") as r:
        assert r.status == 200
    await error_of(await admin.delete(f"/api/api-keys/{key_id}"), 409, "CONFLICT")
    too_big = b'{"name": "' + b"x" * (2 << 20) + b'"}'
    await error_of(await admin.post("/api/api-keys", data=too_big), 413, "PAYLOAD_TOO_LARGE")


async def test_unexpected_error_is_500_without_internals(daemon, admin):
    # Break the database underneath the daemon, as a disk fault would.
    con = sqlite3.connect(daemon.settings.db_path)
    con.execute("DROP TABLE audit_logs")
    con.commit()
    con.close()
    resp = await admin.get("/api/audit-logs")
    body = await error_of(resp, 500, "INTERNAL_ERROR")
    assert body["requestId"] and body["requestId"] == resp.headers["X-Request-Id"]
    text = str(body)
    assert "Traceback" not in text and "sqlite" not in text.lower() and daemon.admin_key not in text


async def test_every_route_refuses_missing_and_low_credentials(daemon, admin):
    specs = daemon.app[keys.ROUTES]
    assert len(specs) >= 8
    viewer = await make_key(admin, "viewer")
    checked = 0
    async with daemon.session(None) as anon, daemon.session(viewer) as view, \
            daemon.session("ssk_revoked-or-unknown") as bad:
        for spec in specs:
            path = re.sub(r"{[^}]+}", "1", spec.path)
            if spec.role is None:
                continue
            for session, status in ((anon, 401), (bad, 401)):
                async with session.request(spec.method, path, json={}) as r:
                    assert r.status == status, (spec.method, spec.path, r.status)
            if spec.role.value != "viewer":
                async with view.request(spec.method, path, json={}) as r:
                    assert r.status == 403, (spec.method, spec.path, r.status)
                    assert (await r.json())["code"] == "FORBIDDEN"
            checked += 1
    assert checked == sum(1 for s in specs if s.role is not None)


async def test_rate_limits_per_category_with_headers(tmp_path):
    limits = {"auth": 5, "server_management": 10, "generation": 5, "default": 60}
    async with running_daemon(tmp_path / "s", limits=limits) as d, d.session() as admin:
        # default: reads, 60/min
        for i in range(60):
            async with admin.get("/api/api-keys") as r:
                assert r.status == 200
                assert r.headers["X-RateLimit-Limit"] == "60"
                assert r.headers["X-RateLimit-Remaining"] == str(59 - i)
                assert int(r.headers["X-RateLimit-Reset"]) > 0
        async with admin.get("/api/api-keys") as r:
            body = await error_of(r, 429, "RATE_LIMIT_EXCEEDED")
            assert int(r.headers["Retry-After"]) >= 1
            assert r.headers["X-RateLimit-Remaining"] == "0"
            assert body["details"]
        # authentication: 5/min, per client address when anonymous; refused ones count
        async with d.session(None) as anon:
            codes = [(await anon.post("/api/auth/login", json={"username": "x", "password": "y"})).status
                     for _ in range(7)]
            assert codes == [401] * 5 + [429] * 2
        # server management (changes to servers): 10/min, counted even when refused
        async with d.session() as admin2:
            statuses = []
            for _ in range(11):
                async with admin2.delete("/api/vast-servers/999999") as r:
                    statuses.append(r.status)
                    assert r.headers["X-RateLimit-Limit"] == "10"
            assert statuses[:10] != [429] * 10 and statuses[10] == 429
            for _ in range(3):  # refused again and again: audited once, not once per refusal
                async with admin2.delete("/api/vast-servers/999999") as r:
                    assert r.status == 429
            # (read from the database: this principal's reads are over their limit too)
            rows = [(r["outcome"], json.loads(r["details"])) for r in await d.app[keys.DB].fetchall(
                "SELECT outcome, details FROM audit_logs WHERE action = 'server.destroy' ORDER BY id")]
            assert len(rows) == 11 and [x["status"] for _, x in rows].count(429) == 1
            assert rows[-1][0] == "denied" and rows[-1][1]["code"] == "RATE_LIMIT_EXCEEDED"
            # image generation: 5/min
            statuses = []
            for _ in range(6):
                async with admin2.post("/api/comfy/1/generate", json={"prompt": "x"}) as r:
                    statuses.append(r.status)
                    assert r.headers["X-RateLimit-Limit"] == "5"
            assert 429 not in statuses[:5] and statuses[5] == 429


async def test_keys_sessions_and_audit(daemon, admin):
    async with admin.post("/api/api-keys", json={"name": "ci", "role": "operator"}) as r:
        created = await r.json()
    secret = created["key"]
    assert secret.startswith("ssk_") and created["prefix"] == secret[: len(created["prefix"])]
    listed = await (await admin.get("/api/api-keys")).json()
    assert secret not in str(listed)
    async with daemon.session(secret) as op:
        me = await (await op.get("/api/auth/me")).json()
        assert me["principal"] == {"kind": "key", "name": "ci", "role": "operator", "keyId": created["id"],
                                   "userId": None}
    # API key also works as X-API-Key
    async with daemon.session(None, headers={"X-API-Key": secret}) as op2:
        assert (await op2.get("/api/auth/me")).status == 200

    add_user(daemon.settings.state_dir, "alice", "correct horse battery", "viewer")
    async with daemon.session(None) as browser:
        async with browser.post("/api/auth/login", json={"username": "alice", "password": "wrong"}) as r:
            await error_of(r, 401, "INVALID_CREDENTIALS")
        async with browser.post("/api/auth/login", json={"username": "alice",
                                                         "password": "correct horse battery"}) as r:
            assert r.status == 200
            cookie = r.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            assert (await r.json())["principal"]["role"] == "viewer"
        me = await (await browser.get("/api/auth/me")).json()
        assert me["principal"]["kind"] == "session" and me["principal"]["name"] == "alice"
        async with browser.post("/api/api-keys", json={"name": "nope"}) as r:
            await error_of(r, 403, "FORBIDDEN")
        async with browser.post("/api/auth/logout") as r:
            assert r.status == 200
        await error_of(await browser.get("/api/auth/me"), 401, "UNAUTHORIZED")

    async with admin.delete(f"/api/api-keys/{created['id']}") as r:
        assert r.status == 200 and (await r.json())["revokedAt"]
    async with daemon.session(secret) as op:
        await error_of(await op.get("/api/auth/me"), 401, "INVALID_API_KEY")

    rows = await (await admin.get("/api/audit-logs?limit=500")).json()
    by_action = {}
    for row in rows:
        by_action.setdefault((row["action"], row["outcome"]), []).append(row)
    assert by_action[("api_key.create", "success")][-1]["targetId"] == str(created["id"])
    assert ("auth.login", "failure") in by_action and ("auth.login", "success") in by_action
    assert by_action[("auth.login", "failure")][0]["actor"] == "alice"
    assert ("auth.logout", "success") in by_action and ("api_key.revoke", "success") in by_action
    assert ("api_key.create", "denied") in by_action
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    dump = str(rows)
    for secret_text in (secret, "correct horse battery", "wrong", daemon.admin_key):
        assert secret_text not in dump
    # filters
    only = await (await admin.get("/api/audit-logs", params={"action": "auth.login",
                                                              "outcome": "failure"})).json()
    assert {(r["action"], r["outcome"]) for r in only} == {("auth.login", "failure")}
    page = await (await admin.get("/api/audit-logs", params={"limit": "2", "offset": "1"})).json()
    assert [r["id"] for r in page] == [r["id"] for r in rows[1:3]]
    since = rows[0]["at"]
    recent = await (await admin.get("/api/audit-logs", params={"since": since})).json()
    assert all(r["at"] >= since for r in recent) and recent


async def test_audit_rows_are_published_as_events(daemon, admin):
    bus = daemon.app[keys.BUS]
    sub = bus.subscribe(100)
    await make_key(admin, "viewer", "evented")
    event = await asyncio.wait_for(sub.get(), 5)
    assert event.type == "audit" and event.data["action"] == "api_key.create" and event.seq == bus.seq


@pytest.mark.parametrize("path", ["/api/health"])
async def test_health_is_public(daemon, path):
    async with daemon.session(None) as anon, anon.get(path) as r:
        assert r.status == 200 and (await r.json())["status"] == "ok"
