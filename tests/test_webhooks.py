"""Webhooks over real sockets: a receiver run by the test verifies the signature;
retries with backoff; dead letters listed; private URLs refused unless allowed."""

from __future__ import annotations

import json
import socket
import time

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver
from fleet_helpers import wait_for
from gen_helpers import rig
from harness import running_daemon

from socialsync.common.queue import SIGNATURE_HEADER, TIMESTAMP_HEADER
from socialsync.daemon.services.webhooks import verify

SECRET = "whsec-test-0123456789"
FAST_GEN = {"prompt": "a lighthouse", "parameters": {"steps": 1, "width": 64, "height": 64}}
HOOKS = {"webhook_allow_private": True, "webhook_secret": SECRET, "webhook_retry_base": 0.05,
         "webhook_retry_max": 0.2, "webhook_retry_deadline": 1.0}


class Receiver:
    """A webhook receiver on loopback: answers ``fail`` times with 500, then 200."""

    def __init__(self, fail: int = 0):
        self.fail = fail
        self.got: list[tuple[dict[str, str], bytes, bool]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        ok = verify(SECRET.encode(), request.headers[TIMESTAMP_HEADER], body, request.headers[SIGNATURE_HEADER])
        self.got.append((dict(request.headers), body, ok))
        if len(self.got) <= self.fail:
            return web.Response(status=500)
        return web.Response(status=204)

    async def __aenter__(self):
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/hook"
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()


async def deliveries(api, **params) -> list[dict]:
    async with api.get("/api/webhooks/deliveries", params=params) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_signed_webhook_on_completion_after_retries(tmp_path):
    async with Receiver(fail=2) as hook, rig(tmp_path, servers=1, scheduler=HOOKS) as r:
        async with r.api.post("/api/generate", json={**FAST_GEN, "webhookUrl": hook.url}) as resp:
            assert resp.status == 202, await resp.text()
            gid = (await resp.json())["generationId"]
        await wait_for(lambda: len(hook.got) >= 3, timeout=15)
        headers, body, ok = hook.got[-1]
        assert ok and all(g[2] for g in hook.got)
        payload = json.loads(body)
        assert payload["event"] == "generation.completed" and headers["X-SocialSync-Event"] == "generation.completed"
        assert payload["data"]["generationId"] == gid and payload["data"]["imageUrls"]
        assert abs(int(headers[TIMESTAMP_HEADER]) - time.time()) < 60
        # a tampered body does not verify
        assert not verify(SECRET.encode(), headers[TIMESTAMP_HEADER], body + b" ", headers[SIGNATURE_HEADER])
        found = await wait_for(lambda: _delivered(r.api), timeout=5)
        assert found["attempts"] == 3 and [a["status"] for a in found["attemptLog"]] == [500, 500, 204]


async def _delivered(api):
    items = await deliveries(api, status="delivered")
    return items[0] if items else None


async def test_dead_letter_after_the_retry_deadline_and_failed_event_on_cancel(tmp_path):
    async with Receiver(fail=10_000) as hook, running_daemon(tmp_path / "state", scheduler=HOOKS) as d, \
            d.session() as api:
        async with api.post("/api/generate", json={**FAST_GEN, "webhookUrl": hook.url}) as resp:
            gid = (await resp.json())["generationId"]
        async with api.delete(f"/api/generations/{gid}") as resp:  # queued, never dispatched
            assert resp.status == 200
        dead = await wait_for(lambda: deliveries(api, status="dead"), timeout=10)
        assert dead[0]["generationId"] == gid and dead[0]["event"] == "generation.failed"
        assert dead[0]["attempts"] >= 3 and len(dead[0]["attemptLog"]) == dead[0]["attempts"]
        assert dead[0]["lastError"] == "HTTP 500"
        payload = json.loads(hook.got[0][1])
        assert payload["data"]["status"] == "cancelled" and hook.got[0][2]
        assert SECRET not in json.dumps(dead)


async def test_private_and_loopback_urls_refused_by_default(tmp_path):
    async with running_daemon(tmp_path / "state") as d, d.session() as api:
        for url in ("http://127.0.0.1:9/hook", "http://localhost/x", "http://10.1.2.3/x", "http://[::1]/x",
                    "http://169.254.169.254/latest", "ftp://example.com/x"):
            async with api.post("/api/generate", json={**FAST_GEN, "webhookUrl": url}) as resp:
                body = await resp.json()
                assert resp.status == 400 and body["code"] == "VALIDATION_ERROR", (url, body)
        async with api.get("/api/queue") as resp:
            assert (await resp.json())["waiting"] == 0


class RebindingDns(AbstractResolver):
    """The outside world's DNS for ``hooks.example.test``: a public address to the first two
    lookups (the check when given, the check before the send), loopback to every later one
    (the connect): a rebinding attack."""

    def __init__(self):
        self.lookups = 0

    async def resolve(self, host, port=0, family=socket.AF_INET):
        self.lookups += 1
        addr = "93.184.216.34" if self.lookups <= 2 else "127.0.0.1"
        return [{"hostname": host, "host": addr, "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self):
        pass


async def test_a_name_rebound_to_loopback_after_the_check_is_not_connected_to(tmp_path):
    """The URL passes the check (public address), then the name answers loopback, where a
    receiver listens: the delivery never reaches it, and the attempt says why."""
    from socialsync.daemon.services.webhooks import WebhookService
    from socialsync.daemon.settings import SchedulerSettings
    from socialsync.daemon.store.db import Database

    dns = RebindingDns()
    settings = SchedulerSettings(webhook_secret=SECRET, webhook_retry_base=0.05, webhook_retry_max=0.05,
                                 webhook_retry_deadline=0.2, webhook_timeout=2)
    async with Receiver() as hook, aiohttp.ClientSession() as shared:
        port = hook.runner.addresses[0][1]
        url = f"http://hooks.example.test:{port}/hook"
        db = await Database.open(tmp_path / "db.sqlite3")
        service = WebhookService(db, shared, settings, tmp_path, resolver=dns)
        try:
            await service.start()
            await service.check_url(url)  # the public answer: accepted
            delivery_id = await service.enqueue(None, "generation.completed", url, {"generationId": 1})
            rows = await wait_for(lambda: service.list("dead", 10), timeout=10)
        finally:
            await service.stop()
            await db.close()
    assert hook.got == []  # nothing reached the loopback receiver
    assert rows[0].id == delivery_id and rows[0].attempts >= 1
    first = rows[0].attempt_log[0]  # passed both checks; stopped at the connect
    assert first.status is None and "resolves only to loopback, private or reserved" in first.error
