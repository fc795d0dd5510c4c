"""Auth sweep (issue 12): every route in the registry, taken from the registry itself,
without credentials, with a revoked key, with a viewer key on writes; and the rate
limit of each category. Any request that gets through is reported by route."""

from __future__ import annotations

import re

import aiohttp
import pytest
from harness import running_daemon

from socialsync.common.auth import Role
from socialsync.daemon import keys

pytestmark = pytest.mark.timeout(60)


def concrete(path: str) -> str:
    """A route path with its placeholders filled (ids that exist or not: auth comes first)."""
    return re.sub(r"\{[^}]+\}", "1", path)


def body_for(method: str) -> dict | None:
    return {} if method in ("POST", "PUT", "PATCH") else None


async def call(session: aiohttp.ClientSession, method: str, path: str, **headers: str) -> int:
    if path == "/ws":
        try:
            async with session.ws_connect(path, headers=headers):
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
    async with session.request(method, concrete(path), json=body_for(method), headers=headers) as r:
        return r.status


async def make_key(admin: aiohttp.ClientSession, name: str, role: str) -> dict:
    async with admin.post("/api/api-keys", json={"name": name, "role": role}) as r:
        assert r.status == 201, await r.text()
        return await r.json()


async def test_every_route_refuses_missing_revoked_and_underprivileged(tmp_path):
    async with running_daemon(tmp_path / "state") as d, d.session() as admin, d.session(key=None) as anon:
        specs = d.app[keys.ROUTES]
        viewer = await make_key(admin, "sweep-viewer", "viewer")
        operator = await make_key(admin, "sweep-operator", "operator")
        revoked = await make_key(admin, "sweep-revoked", "admin")
        async with admin.delete(f"/api/api-keys/{revoked['id']}") as r:
            assert r.status == 200
        leaks: list[str] = []
        protected = [s for s in specs if s.role is not None]
        assert len(protected) >= 40, "the sweep must cover the registry"
        for spec in protected:
            status = await call(anon, spec.method, spec.path)
            if status not in (401,):
                leaks.append(f"no credentials: {spec.method} {spec.path} -> {status}")
            status = await call(anon, spec.method, spec.path, Authorization=f"Bearer {revoked['key']}")
            if status != 401:
                leaks.append(f"revoked key: {spec.method} {spec.path} -> {status}")
            status = await call(anon, spec.method, spec.path, **{"X-API-Key": "ssk_not-a-real-key"})
            if status != 401:
                leaks.append(f"unknown key: {spec.method} {spec.path} -> {status}")
            if spec.role in (Role.OPERATOR, Role.ADMIN):
                status = await call(anon, spec.method, spec.path, Authorization=f"Bearer {viewer['key']}")
                if status != 403:
                    leaks.append(f"viewer key: {spec.method} {spec.path} -> {status}")
            if spec.role is Role.ADMIN:
                status = await call(anon, spec.method, spec.path, Authorization=f"Bearer {operator['key']}")
                if status != 403:
                    leaks.append(f"operator key: {spec.method} {spec.path} -> {status}")
        # /metrics is public in the registry but checks credentials itself (metrics_auth).
        async with anon.get("/metrics") as r:
            if r.status != 401:
                leaks.append(f"no credentials: GET /metrics -> {r.status}")
        # A forged session cookie is no credential either.
        async with anon.get("/api/vast-servers", cookies={"socialsync_session": "forged"}) as r:
            if r.status != 401:
                leaks.append(f"forged session: GET /api/vast-servers -> {r.status}")
        # The public ones stay public.
        async with anon.get("/api/health") as r:
            assert r.status == 200
        print(f"auth sweep: {len(protected)} protected routes x 4 principals, {len(leaks)} let through")
        assert leaks == []


CATEGORY_PROBES = {
    # category: (method, path, body)
    "auth": ("POST", "/api/auth/login", {"username": "nobody", "password": "wrong"}),
    "server_management": ("POST", "/api/vast-servers", {}),
    "generation": ("POST", "/api/comfy/999/generate", {}),
    "default": ("GET", "/api/vast-servers", None),
}


async def test_rate_limit_of_every_category(tmp_path):
    limits = {"auth": 2, "server_management": 3, "generation": 2, "default": 4}
    async with running_daemon(tmp_path / "state", limits=limits) as d:
        auth = d.app[keys.AUTH]  # keys made in-process: no request spends a budget
        other = await auth.create_key("other", Role.ADMIN, created_by="test")
        let_through = []
        for category, (method, path, body) in CATEGORY_PROBES.items():
            limit = limits[category]
            key = None if category == "auth" else (await auth.create_key(category, Role.ADMIN, created_by="test")).key
            async with d.session(key=key) as s:
                statuses = []
                for _ in range(limit + 3):
                    async with s.request(method, path, json=body) as r:
                        statuses.append(r.status)
                        if r.status == 429:
                            assert int(r.headers["Retry-After"]) >= 1
                            assert (await r.json())["code"] == "RATE_LIMIT_EXCEEDED"
            refused = [st for st in statuses[limit:] if st != 429]
            if refused or 429 in statuses[:limit]:
                let_through.append(f"{category}: {statuses}")
            if category != "auth":
                # Per principal: another key still has its own budget.
                async with d.session(key=other.key) as s, s.request(method, path, json=body) as r:
                    assert r.status != 429, f"{category}: a second principal was limited too"
        print(f"rate limits: {len(CATEGORY_PROBES)} categories, {len(let_through)} let a request through")
        assert let_through == []
