"""/metrics over real HTTP, read back with prometheus-client's own parser, after real
traffic: Vast calls to the simulator, ComfyUI probes and a generation on a simulated
server, a websocket client, ZeroMQ events and a rate-limit refusal."""

from __future__ import annotations

from decimal import Decimal

from fleet_helpers import fleet, server, wait_for
from harness import running_daemon
from prometheus_client.parser import text_string_to_metric_families

from socialsync.daemon import keys
from socialsync.daemon.demo import DemoComfyProvider

FAST = {"probe_interval": 0.05, "probe_interval_max": 0.2, "health_interval": 0.5, "ready_deadline": 5}


async def scrape(api) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}}."""
    async with api.get("/metrics") as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await r.text()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def total(samples, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for k, v in samples.get(name, {}).items() if want <= set(k))


async def generation(api, gid: int) -> dict:
    async with api.get(f"/api/generations/{gid}") as r:
        return await r.json()


async def test_metrics_after_real_traffic(tmp_path):
    provider = DemoComfyProvider(tmp_path / "comfy", step_time=0.01)
    async with fleet(tmp_path, sim_kw={"comfy_provider": provider}, comfy=FAST, limits={"auth": 2}) \
            as (_sim, d), d.session() as api:
        async with api.get("/api/vast-offers", params={"order": "price"}) as r:
            offer = (await r.json())[0]
        async with api.post("/api/vast-servers", json={"offerId": offer["offerId"]}) as r:
            sid = (await r.json())["id"]
        await wait_for(lambda: _ready(api, sid), timeout=10)

        async with api.post(f"/api/comfy/{sid}/generate", json={"prompt": "a fox", "parameters": {"steps": 3}}) as r:
            assert r.status in (200, 201, 202), await r.text()
            done_id = (await r.json())["generationId"]
        done = await wait_for(lambda: _finished(api, done_id), timeout=10)
        assert done["status"] == "completed"
        async with api.post(f"/api/comfy/{sid}/generate", json={"prompt": "slow", "parameters": {"steps": 150}}) as r:
            slow_id = (await r.json())["generationId"]
        async with api.delete(f"/api/generations/{slow_id}") as r:
            assert r.status == 200, await r.text()
        await wait_for(lambda: _finished(api, slow_id), timeout=10)

        async with d.session(None) as anon:  # the auth category allows 2 a minute: the third is refused
            for expected in (401, 401, 429):
                async with anon.get("/api/auth/me") as r:
                    assert r.status == expected

        async with api.ws_connect("/ws") as ws:
            await ws.receive_json()  # hello
            samples = await scrape(api)
            assert value(samples, "socialsync_ws_clients") == 1

        # Vast: every call by endpoint and outcome, latency histograms that agree with the counts.
        assert value(samples, "socialsync_vast_calls_total", endpoint="create", outcome="ok") == 1
        assert total(samples, "socialsync_vast_calls_total", endpoint="bundles") == 1  # the offer search
        lists = total(samples, "socialsync_vast_calls_total", endpoint="list")
        assert lists >= 1 and value(samples, "socialsync_vast_call_duration_seconds_count", endpoint="list") == lists
        assert value(samples, "socialsync_vast_call_duration_seconds_bucket", endpoint="list", le="+Inf") == lists
        assert value(samples, "socialsync_vast_call_duration_seconds_sum", endpoint="list") > 0
        # ComfyUI: the readiness probes and the generation's calls.
        assert total(samples, "socialsync_comfy_calls_total", endpoint="GET /system_stats", outcome="ok") >= 1
        assert total(samples, "socialsync_comfy_calls_total", endpoint="POST /prompt") >= 2
        assert total(samples, "socialsync_comfy_call_duration_seconds_count") == \
            total(samples, "socialsync_comfy_calls_total")
        # Generations by outcome, with the completed one's duration.
        assert value(samples, "socialsync_generations_total", outcome="completed") == 1
        assert value(samples, "socialsync_generations_total", outcome="cancelled") == 1
        assert value(samples, "socialsync_generation_duration_seconds_count", outcome="completed") == 1
        row = await d.app[keys.DB].fetchone("SELECT duration_ms FROM generations WHERE id = ?", (done_id,))
        assert value(samples, "socialsync_generation_duration_seconds_sum", outcome="completed") == \
            row["duration_ms"] / 1000
        assert value(samples, "socialsync_generation_queue_depth", status="queued") == 0
        assert value(samples, "socialsync_generation_queue_depth", status="processing") == 0
        # Servers, rate limits, events, ZeroMQ, money.
        assert value(samples, "socialsync_servers", status="running") == 1
        assert value(samples, "socialsync_servers", status="stopped") == 0
        assert value(samples, "socialsync_servers_setup", setup_status="ready") == 1
        assert value(samples, "socialsync_servers_ready") == 1
        assert value(samples, "socialsync_rate_limit_refusals_total", category="auth") == 1
        assert value(samples, "socialsync_events_total", type="server_status") >= 3
        assert value(samples, "socialsync_events_total", type="generation_completed") == 1
        zmq_sent = value(samples, "socialsync_zmq_messages_total")
        assert zmq_sent >= value(samples, "socialsync_events_total", type="server_status")
        assert value(samples, "socialsync_ws_connections_total") == 1
        s = await server(api, sid)
        assert value(samples, "socialsync_burn_rate_dollars_per_hour") == float(Decimal(s["pricePerHour"]))
        assert value(samples, "socialsync_vast_credit_dollars") == 25.0
        assert samples["socialsync_spend_today_dollars"][()] >= 0
        await provider.close()


async def test_metrics_auth_and_queue_depth_from_rows(tmp_path):
    async with running_daemon(tmp_path / "state") as d, d.session() as api:
        async with d.session(None) as anon, anon.get("/metrics") as r:
            assert r.status == 401 and (await r.json())["code"] == "UNAUTHORIZED"
        async with d.session("ssk_not_a_key") as bad, bad.get("/metrics") as r:
            assert r.status == 401 and (await r.json())["code"] == "INVALID_API_KEY"
        async with api.post("/api/api-keys", json={"name": "grafana", "role": "viewer"}) as r:
            viewer = (await r.json())["key"]
        db = d.app[keys.DB]
        now = "2030-01-01T00:00:00.000Z"
        await db.executemany("INSERT INTO generations (prompt, status, created_at) VALUES ('p', ?, ?)",
                             [("queued", now), ("queued", now), ("processing", now), ("completed", now)])
        async with d.session(viewer) as v:
            samples = await scrape(v)
        assert value(samples, "socialsync_generation_queue_depth", status="queued") == 2
        assert value(samples, "socialsync_generation_queue_depth", status="processing") == 1
        assert "socialsync_vast_credit_dollars" not in samples  # no Vast key
        assert value(samples, "socialsync_zmq_messages_total") >= 0

    async with running_daemon(tmp_path / "open", costs={"metrics_auth": False}) as d:
        async with d.session(None) as anon:
            samples = await scrape(anon)
        assert value(samples, "socialsync_servers", status="running") == 0


async def _ready(api, sid):
    s = await server(api, sid)
    return s if s["setupStatus"] == "ready" else None


async def _finished(api, gid):
    g = await generation(api, gid)
    return g if g["status"] in ("completed", "failed", "cancelled") else None
