"""The Vast simulator speaks Vast's wire protocol (reference §8), checked over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys

import aiohttp
import pytest
from aiohttp import web

from socialsync.daemon.sim.clock import Clock, ManualClock
from socialsync.daemon.sim.vast import VastSim, default_catalog, demo_catalog
from socialsync.daemon.vast import VastAuthError
from tests.vast_helpers import KEY, make_client, raw, running_sim

COMFY = "ghcr.io/socialsync/comfyui:0.3.64"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def sim(clock):
    async with running_sim(clock, boot_seconds=30) as s:
        yield s


def _offer(sim: VastSim, **match) -> dict:
    return next(
        o
        for o in sim.offers.values()
        if not o["rented"]
        and o["verification"] == "verified"
        and not o["external"]
        and all(o.get(k) == v for k, v in match.items())
    )


async def _create(sim: VastSim, body: dict | None = None, offer_id: int | None = None, key: str = KEY):
    offer_id = offer_id or _offer(sim)["id"]
    payload = {
        "client_id": "me",
        "image": COMFY,
        "disk": 10,
        "env": {"-p 8188:8188": "1"},
        "runtype": "ssh_direc ssh_proxy",
        "label": "ss:t",
    }
    payload.update(body or {})
    return await raw(sim, "PUT", f"/api/v0/asks/{offer_id}/", json_body=payload, key=key)


class PortServers:
    """A provider that starts a real tiny HTTP server per instance (like the ComfyUI sim would)."""

    def __init__(self) -> None:
        self.running: dict[int, web.AppRunner] = {}
        self.calls: list[tuple[str, int]] = []
        self.seen: list[dict] = []

    async def on_running(self, instance: dict) -> int:
        self.seen.append(instance)

        async def stats(request: web.Request) -> web.Response:
            return web.json_response({"instance": instance["id"]})

        app = web.Application()
        app.router.add_get("/system_stats", stats)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.running[instance["id"]] = runner
        self.calls.append(("up", instance["id"]))
        return runner.addresses[0][1]

    async def on_gone(self, instance_id: int) -> None:
        self.calls.append(("gone", instance_id))
        runner = self.running.pop(instance_id, None)
        if runner is not None:
            await runner.cleanup()


# ------------------------------------------------------------------ transport quirks


async def test_routing_and_auth_quirks(sim):
    for path in ("/api/v0/users/current", "/api/v0/users/current/"):
        status, _, body, _ = await raw(sim, "GET", path)
        assert status == 200 and body["credit"] == 25.0
    status, _, _, _ = await raw(sim, "GET", "/api/v0/users/current/", key=None, params={"api_key": KEY})
    assert status == 200
    for key in (None, "nope"):
        status, _, body, _ = await raw(sim, "GET", "/api/v1/instances/", key=key)
        assert status == 401 and body == {"success": False, "error": "auth_error", "msg": "Invalid user key"}
    iid = sim.add_instance(label="ss:q")
    for path in (f"/api/v0/instances/{iid}/", f"/api/v0/instances/{iid}", f"/api/v1/instances/{iid}/"):
        status, _, body, _ = await raw(sim, "GET", path, params={"owner": "me"})
        assert status == 200 and body["instances"]["id"] == iid
    status, _, body, _ = await raw(sim, "DELETE", f"/api/v0/instances/{iid}", json_body={})
    assert status == 200 and body["success"] is True
    status, _, body, _ = await raw(sim, "GET", "/api/v0/nothing/here/")
    assert status == 404 and body["success"] is False


async def test_any_key_mode(clock):
    async with running_sim(clock, api_key=None) as open_sim:
        assert (await raw(open_sim, "GET", "/api/v0/users/current", key="whatever"))[0] == 200
        assert (await raw(open_sim, "GET", "/api/v0/users/current", key=None))[0] == 401


@pytest.mark.parametrize("case", ["bundles", "list", "show_null", "auth", "no_such_ask", "bad_json", "user"])
async def test_content_type_is_exactly_application_json(sim, case):
    requests = {
        "bundles": ("POST", "/api/v0/bundles/", {"limit": 1}, KEY),
        "list": ("GET", "/api/v1/instances/", None, KEY),
        "show_null": ("GET", "/api/v0/instances/1/", None, KEY),
        "auth": ("GET", "/api/v1/instances/", None, "bad"),
        "no_such_ask": ("PUT", "/api/v0/asks/1/", {"image": COMFY}, KEY),
        "bad_json": ("POST", "/api/v0/bundles/", None, KEY),
        "user": ("GET", "/api/v0/users/current", None, KEY),
    }
    method, path, body, key = requests[case]
    async with aiohttp.ClientSession() as session:
        data = (
            b"{not json" if case == "bad_json" else (json.dumps(body).encode() if body is not None else None)
        )
        async with session.request(
            method, sim.base_url + path, data=data, headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            assert resp.headers["Content-Type"] == "application/json"
            payload = await resp.json(content_type=None)
    if case == "bad_json":
        assert resp.status == 400 and payload == {
            "success": False,
            "error": "invalid_request",
            "msg": "Invalid json body",
        }


async def test_request_log_records_what_was_sent(sim):
    async with make_client(sim, user_agent="socialsync/test") as c:
        await c.list_instances({"label": {"eq": "x"}})
    rec = sim.requests[-1]
    assert rec.method == "GET" and rec.path == "/api/v1/instances/" and rec.endpoint == "list"
    assert json.loads(rec.query["select_filters"]) == {"label": {"eq": "x"}}
    assert rec.user_agent == "socialsync/test" and rec.status == 200 and rec.json is None


# ------------------------------------------------------------------ offers


async def _search(sim, query: dict) -> list[dict]:
    status, _, body, _ = await raw(sim, "POST", "/api/v0/bundles/", json_body=query)
    assert status == 200, body
    return body["offers"]


async def test_query_operators_and_coercion(sim):
    all_offers = await _search(sim, {})
    assert len(all_offers) == len(sim.offers)
    multi = await _search(sim, {"num_gpus": {"gt": "1", "lte": "8"}})
    assert multi and all(1 < o["num_gpus"] <= 8 for o in multi)
    assert all(o["gpu_name"] != "RTX 4090" for o in await _search(sim, {"gpu_name": {"neq": "RTX_4090"}}))
    names = {o["gpu_name"] for o in await _search(sim, {"gpu_name": {"in": ["H100 SXM", "A100 SXM4"]}})}
    assert names == {"H100 SXM", "A100 SXM4"}
    assert all(o["gpu_name"] != "RTX 3090" for o in await _search(sim, {"gpu_name": {"notin": ["RTX 3090"]}}))
    na = await _search(sim, {"geolocation": {"in": ["US", "CA"]}})
    assert na and all(o["geolocation"][-2:] in ("US", "CA") for o in na)
    assert len(await _search(sim, {"verified": {"eq": "any"}, "reliability": {"gte": "0"}})) == len(
        all_offers
    )
    assert all(o["verified"] is True for o in await _search(sim, {"verified": {"eq": "true"}}))
    assert all(o["dph_total"] < 0.5 for o in await _search(sim, {"dph": {"lt": 0.5}}))  # alias
    status, _, body, _ = await raw(sim, "POST", "/api/v0/bundles/", json_body={"bogus_col": {"eq": 1}})
    assert status == 400 and body["error"] == "invalid_request"


async def test_order_limit_type_and_storage(sim):
    rows = await _search(sim, {"order": [["num_gpus", "desc"], ["dph_total", "asc"]], "limit": 12})
    assert len(rows) == 12
    keys = [(-o["num_gpus"], o["dph_total"]) for o in rows]
    assert keys == sorted(keys)
    assert [o["score"] for o in await _search(sim, {})] == sorted(
        (o["score"] for o in await _search(sim, {})), reverse=True
    )
    oid = _offer(sim)["id"]
    on_demand = (await _search(sim, {"id": {"eq": oid}, "type": "ondemand"}))[0]
    bid = (await _search(sim, {"id": {"eq": oid}, "type": "bid"}))[0]
    reserved = (await _search(sim, {"id": {"eq": oid}, "type": "reserved"}))[0]
    assert bid["is_bid"] and bid["dph_total"] < on_demand["dph_total"]
    assert reserved["dph_total"] < on_demand["dph_total"]
    small = (await _search(sim, {"id": {"eq": oid}, "allocated_storage": 8}))[0]
    large = (await _search(sim, {"id": {"eq": oid}, "allocated_storage": 64}))[0]
    assert large["dph_total"] - small["dph_total"] == pytest.approx(0.15 * 56 / 720, abs=1e-5)
    status, _, _, _ = await raw(sim, "POST", "/api/v0/bundles/", json_body={"type": "spot"})
    assert status == 400


async def test_other_search_endpoints_and_rented_offers_disappear(sim):
    offer = _offer(sim)
    status, _, body, _ = await raw(
        sim, "PUT", "/api/v0/search/asks/", json_body={"select_cols": ["*"], "q": {"id": {"eq": offer["id"]}}}
    )
    assert status == 200 and [o["id"] for o in body["offers"]] == [offer["id"]]
    status, _, body, _ = await raw(
        sim, "GET", "/api/v0/bundles/", params={"q": json.dumps({"id": {"eq": offer["id"]}})}
    )
    assert status == 200 and len(body["offers"]) == 1
    defaults = {"rentable": {"eq": True}, "rented": {"eq": False}}
    assert await _search(sim, {"id": {"eq": offer["id"]}, **defaults})
    assert (await _create(sim, offer_id=offer["id"]))[0] == 200
    assert await _search(sim, {"id": {"eq": offer["id"]}, **defaults}) == []
    assert (await _search(sim, {"id": {"eq": offer["id"]}}))[0]["rented"] is True


def test_catalogues_are_realistic():
    cat = default_catalog(40)
    assert {o["gpu_name"] for o in cat} >= {"RTX 4090", "RTX 3090", "RTX A5000", "A100 SXM4", "H100 SXM"}
    assert {o["num_gpus"] for o in cat} <= {1, 2, 4, 8} and max(o["num_gpus"] for o in cat) == 8
    for o in cat:
        assert re.fullmatch(r"[A-Za-z .]+, [A-Z]{2}", o["geolocation"])
        assert o["dph_base"] > 0 and 0 < o["reliability"] < 1
        if o["direct_port_count"] > 0:
            assert o["direct_port_end"] - o["direct_port_start"] + 1 == o["direct_port_count"]
    assert len({o["id"] for o in cat}) == 40
    assert demo_catalog() == demo_catalog() and default_catalog(5, seed=1) != default_catalog(5, seed=2)


def test_large_catalogue_port_ranges_are_real_ports():
    """A 400-offer catalogue (the soak's) only has host port ranges a client can connect to."""
    for o in default_catalog(400):
        if o["direct_port_count"] > 0:
            assert 0 < o["direct_port_start"] <= o["direct_port_end"] <= 65535


# ------------------------------------------------------------------ create


_BAD_CREATES = {
    "no_image": ({"image": None}, 400, "invalid_args"),
    "small_disk": ({"disk": 4}, 400, "invalid_args"),
    "price_range": ({"price": 500}, 400, "invalid_price"),
    "env_type": ({"env": 42}, 400, "invalid_args"),
    "env_value_len": ({"env": {"X": "v" * 300}}, 400, "invalid_args"),
    "onstart_len": ({"onstart": "x" * 5000}, 400, "invalid_args"),
    "label_len": ({"label": "l" * 300}, 400, "invalid_args"),
    "runtype": ({"runtype": "telnet"}, 400, "invalid_args"),
}


@pytest.mark.parametrize("case", list(_BAD_CREATES))
async def test_create_validation(sim, case):
    body, status, error = _BAD_CREATES[case]
    got, ctype, payload, _ = await _create(sim, body)
    assert (got, payload["error"], payload["success"]) == (status, error, False)
    assert ctype == "application/json" and payload["msg"].startswith("error 400/")
    assert sim.instances == {}


async def test_create_success_and_offer_errors(sim):
    status, _, body, _ = await _create(
        sim, {"env": "-e A=B -p 8188:8188 -p 8082:8082/udp -h box", "template_hash_id": None}
    )
    assert status == 200 and body["success"] is True and isinstance(body["new_contract"], int)
    assert len(body["instance_api_key"]) >= 32
    row = sim.render(body["new_contract"])
    assert ["A", "B"] in row["extra_env"] and ["-p 8188:8188", "1"] in row["extra_env"]
    assert ["-h", "box"] in row["extra_env"] and row["image_runtype"] == "ssh ssh_direc ssh_proxy"
    status, _, body, _ = await _create(sim, offer_id=1234567)
    assert status == 404 and body == {
        "success": False,
        "error": "invalid_args",
        "msg": "error 404/3603: no_such_ask Instance type by id 1234567 is not available.",
        "ask_id": 1234567,
    }
    offer = _offer(sim)
    sim.unavailable_offers.add(offer["id"])
    status, _, body, _ = await _create(sim, offer_id=offer["id"])
    assert status == 410 and body["error"] == "no_such_ask" and body["msg"].startswith("error 410/3907")
    status, _, body, _ = await _create(sim, {"cancel_unavail": False}, offer_id=offer["id"])
    assert status == 200 and sim.render(body["new_contract"])["actual_status"] == "stopped"
    status, _, body, _ = await _create(sim, {"image": None, "template_hash_id": "abc123"})
    assert status == 200
    sim.create_credit_failure = True
    status, _, body, _ = await _create(sim)
    assert status == 400 and body["error"] == "insufficient_credit" and "credit" in body["msg"].lower()


# ------------------------------------------------------------------ list


async def test_v1_list_paging_rules(sim):
    for n in range(30):
        sim.add_instance(label=f"ss:{n % 3}")

    async def page(**params):
        q = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
        return await raw(sim, "GET", "/api/v1/instances/", params=q)

    _, _, body, _ = await page(limit=0)
    assert body["instances_found"] == 5 and body["total_instances"] == 30
    assert body["label_counts"] == {"ss:0": 10, "ss:1": 10, "ss:2": 10}
    _, _, body, _ = await page(limit=100)
    assert body["instances_found"] == 25 and isinstance(body["next_token"], str)
    _, _, last, _ = await page(limit=25, after_token=body["next_token"])
    assert last["instances_found"] == 5 and last["next_token"] is None
    status, _, bad, _ = await page(after_token="garbage")
    assert status == 400 and bad["error"] == "invalid_token"
    for computed in ("dph_total", "num_gpus"):
        status, _, bad, _ = await page(select_filters={computed: {"gt": 0}})
        assert status == 400 and bad["error"] == "invalid_request" and computed in bad["msg"]
    _, _, body, _ = await page(order_by=[{"col": "label", "dir": "desc"}], limit=12)
    rows = body["instances"]
    assert [r["label"] for r in rows] == ["ss:2"] * 10 + ["ss:1"] * 2
    assert [r["id"] for r in rows[:10]] == sorted(r["id"] for r in rows[:10])  # id tiebreaker
    _, _, body, _ = await page(select_cols=["id", "label", "no_such_col"], limit=1)
    assert body["instances"] == [{"id": body["instances"][0]["id"], "label": "ss:0", "no_such_col": None}]
    _, _, body, _ = await page(select_filters={"label": {"eq": "ss:1"}, "actual_status": {"in": ["running"]}})
    assert body["total_instances"] == 10
    status, _, body, _ = await raw(sim, "GET", "/api/v0/instances/", params={"owner": "me"})
    assert status == 410
    sim.legacy_list = "old"
    status, _, body, _ = await raw(sim, "GET", "/api/v0/instances/", params={"owner": "me"})
    assert status == 200 and body["instances_found"] == 30 and len(body["instances"]) == 30


# ------------------------------------------------------------------ state machine


async def test_boot_sequence_and_providers(clock):
    comfy, ssh = PortServers(), PortServers()
    async with running_sim(clock, boot_seconds=100, comfy_provider=comfy, ssh_provider=ssh) as sim:
        async with make_client(sim) as c:
            offer = (await c.search_offers(limit=1))[0]
            created = await c.create_instance(offer.id, image=COMFY, label="ss:boot")
            iid = created.instance_id
            seen = []
            for step in (0, 15, 10, 30, 30, 20):
                clock.advance(step)
                inst = await c.show_instance(iid)
                seen.append(inst.actual_status)
                if inst.actual_status == "loading":
                    assert re.search(r"Pull|Download", inst.status_msg)
            assert seen == [None, "created", "loading", "loading", "loading", "running"]
            inst = await c.show_instance(iid)
            port = inst.host_port(8188)
            assert port == comfy.running[iid].addresses[0][1]
            assert inst.host_port(22) == inst.ssh_port == ssh.running[iid].addresses[0][1]
            assert inst.ssh_host == "127.0.0.1"
            assert comfy.seen[0]["label"] == "ss:boot" and ["-p 8188:8188", "1"] in comfy.seen[0]["extra_env"]
            assert comfy.seen[0]["container_api_key"] == created.instance_api_key
            async with aiohttp.ClientSession() as http:
                host, p = inst.public_endpoint(8188)
                async with http.get(f"http://{host}:{p}/system_stats") as resp:
                    assert (await resp.json())["instance"] == iid

            await c.stop_instance(iid)
            assert comfy.calls[-1] == ("gone", iid) and iid not in comfy.running
            assert (await c.show_instance(iid)).ports is None
            await c.start_instance(iid)
            clock.advance(50)
            assert (await c.show_instance(iid)).actual_status == "running"
            assert comfy.calls.count(("up", iid)) == 2
            await c.destroy_instance(iid)
            assert comfy.calls[-1] == ("gone", iid) and ssh.calls[-1] == ("gone", iid)
            assert comfy.running == {} and ssh.running == {}


async def test_boot_time_overrides(clock):
    async with running_sim(clock, boot_seconds=100) as sim:
        fast = _offer(sim)
        sim.boot_overrides[fast["id"]] = 10
        a = (await _create(sim, offer_id=fast["id"]))[2]["new_contract"]
        b = (await _create(sim))[2]["new_contract"]
        clock.advance(11)
        await sim.tick()
        assert (sim.render(a)["actual_status"], sim.render(b)["actual_status"]) == ("running", "created")
        sim.set_boot_seconds(b, 20)  # re-timed from its boot start
        assert sim.render(b)["actual_status"] == "loading"
        clock.advance(10)
        await sim.tick()
        assert sim.render(b)["actual_status"] == "running"


async def test_provider_failure_exits_instance(clock):
    class Broken:
        async def on_running(self, instance):
            raise RuntimeError("cannot start comfy")

    async with running_sim(clock, boot_seconds=0, comfy_provider=Broken()) as sim:
        iid = sim.add_instance(label="ss:x")
        await sim.tick()
        row = sim.render(iid)
        assert row["actual_status"] == "exited" and "cannot start comfy" in row["status_msg"]


async def test_faults_reboot_and_recycle(sim, clock):
    iid = sim.add_instance(label="ss:f")
    await sim.tick()
    assert sim.render(iid)["actual_status"] == "running" and sim.render(iid)["ports"]
    sim.set_status(iid, "unknown")
    assert sim.render(iid)["actual_status"] == "unknown" and sim.render(iid)["ports"] is None
    sim.set_status(iid, None)
    await sim.tick()
    assert sim.render(iid)["actual_status"] == "running"
    sim.set_status(iid, "exited")
    row = sim.render(iid)
    assert row["actual_status"] == "exited" and "OCI runtime" in row["status_msg"]
    sim.set_status(iid, "offline")
    assert sim.render(iid)["actual_status"] == "offline"
    sim.set_status(iid, "running")
    await sim.tick()
    assert sim.render(iid)["actual_status"] == "running"

    status, _, _, _ = await raw(sim, "PUT", f"/api/v0/instances/reboot/{iid}/", json_body={})
    assert status == 200 and sim.render(iid)["actual_status"] == "rebooting"
    clock.advance(5)
    await sim.tick()
    assert sim.render(iid)["actual_status"] == "running"
    status, _, _, _ = await raw(sim, "PUT", f"/api/v0/instances/recycle/{iid}/", json_body={})
    assert sim.render(iid)["actual_status"] == "recycling"
    clock.advance(5)
    await sim.tick()
    assert sim.render(iid)["actual_status"] == "loading"
    clock.advance(24)
    await sim.tick()
    assert sim.render(iid)["actual_status"] == "running"
    sim.set_status(iid, "stopped", "outbid")
    row = sim.render(iid)
    assert row["actual_status"] == "stopped" and row["status_msg"] == "outbid"


async def test_start_waits_in_scheduling(sim, clock):
    iid = sim.add_instance(label="ss:s", status="stopped")
    sim.hold_scheduling(iid)
    status, _, _, _ = await raw(sim, "PUT", f"/api/v0/instances/{iid}/", json_body={"state": "running"})
    assert status == 200
    clock.advance(600)
    await sim.tick()
    row = sim.render(iid)
    assert (row["intended_status"], row["actual_status"]) == ("running", "stopped")
    assert "scheduling" in row["status_msg"]
    sim.release_scheduling(iid)
    clock.advance(15)
    await sim.tick()
    assert sim.render(iid)["actual_status"] == "running"


async def test_billing_and_credit_exhaustion(clock):
    async with running_sim(clock, boot_seconds=0, credit=2.0) as sim:
        a = sim.add_instance(label="ss:a")
        b = sim.add_instance(label="ss:b", status="stopped")
        await sim.tick()
        inst_a, inst_b = sim.instances[a], sim.instances[b]
        clock.advance(3600)
        await sim.tick()
        assert inst_a.cost == pytest.approx(inst_a.gpu_dph + inst_a.storage_dph, rel=1e-9)
        assert inst_b.cost == pytest.approx(inst_b.storage_dph, rel=1e-6)  # storage only while stopped
        assert sim.credit == pytest.approx(2.0 - inst_a.cost - inst_b.cost)
        clock.advance(3600 * 1000)
        await sim.tick()
        assert sim.credit <= 0
        row = sim.render(a)
        assert (row["intended_status"], row["actual_status"]) == ("stopped", "stopped")
        assert "credit" in row["status_msg"]
        async with make_client(sim) as c:
            assert (await c.current_user()).credit == pytest.approx(sim.credit, abs=1e-3)


async def test_instance_api_key_is_scoped(sim):
    _, _, first, _ = await _create(sim)
    _, _, second, _ = await _create(sim)
    own, other = first["new_contract"], second["new_contract"]
    scoped = first["instance_api_key"]
    put = await raw(sim, "PUT", f"/api/v0/instances/{own}/", json_body={"state": "stopped"}, key=scoped)
    assert put[0] == 200 and sim.instances[own].intended == "stopped"
    for method, path, body in (
        ("PUT", f"/api/v0/instances/{own}/", {"label": "x"}),
        ("GET", "/api/v1/instances/", None),
        ("DELETE", f"/api/v0/instances/{other}/", {}),
    ):
        status, _, payload, _ = await raw(sim, method, path, json_body=body, key=scoped)
        assert status == 403 and payload["error"] == "not_authorized"
    assert (await raw(sim, "DELETE", f"/api/v0/instances/{own}/", json_body={}, key=scoped))[0] == 200
    async with make_client(sim, api_key=scoped) as c:
        with pytest.raises(VastAuthError):
            await c.list_instances()


async def test_logs_two_step_flow(sim):
    iid = sim.add_instance(label="ss:l")
    sim.append_log(iid, *(f"line {n}" for n in range(10)))
    status, _, body, _ = await raw(
        sim, "PUT", f"/api/v0/instances/request_logs/{iid}/", json_body={"tail": "3", "filter": "line [0-8]"}
    )
    assert status == 200 and body["result_url"].startswith(sim.base_url + "/")
    async with aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(3):
            async with http.get(body["result_url"]) as resp:
                statuses.append(resp.status)
                text, ctype = await resp.text(), resp.headers["Content-Type"]
    assert statuses == [404, 404, 200] and ctype == "text/plain"
    assert text.splitlines() == ["line 6", "line 7", "line 8"]
    status, _, body, _ = await raw(sim, "PUT", "/api/v0/instances/request_logs/999/", json_body={})
    assert status == 404 and body["error"] == "invalid_id"


# ------------------------------------------------------------------ fault knobs


async def test_rate_limit_styles_on_the_wire(sim):
    expected = {
        "text": ("text/plain", "API requests too frequent"),
        "text_threshold": ("text/plain", "API requests too frequent: endpoint threshold=1.0"),
        "detail": ("application/json", {"detail": "API requests too frequent endpoint threshold=1.0"}),
        "json": (
            "application/json",
            {"success": False, "error": "rate_limit_exceeded", "msg": "API requests too frequent"},
        ),
    }
    for style, (ctype, body) in expected.items():
        sim.inject_rate_limit("user", style=style, retry_after=3 if style == "json" else None)
        status, got_type, got, headers = await raw(sim, "GET", "/api/v0/users/current")
        assert (status, got_type, got) == (429, ctype, body)
        assert headers.get("Retry-After") == ("3" if style == "json" else None)
    sim.inject_rate_limit("bundles", style="quota")
    status, _, got, headers = await raw(sim, "POST", "/api/v0/bundles/", json_body={})
    assert status == 429 and got["error"] == "search_quota_exceeded"
    assert int(headers["X-RateLimit-Reset"]) % 86400 == 0 and int(headers["X-RateLimit-Reset"]) > clock_now(
        sim
    )
    assert (await raw(sim, "GET", "/api/v0/users/current"))[0] == 200


def clock_now(sim: VastSim) -> float:
    return sim.clock.now()


async def test_transport_fault_knobs(sim):
    sim.inject_reset("user", count=2)  # aiohttp silently re-sends an idempotent request once
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await raw(sim, "GET", "/api/v0/users/current")
    assert [r.reset for r in sim.requests_for("user")] == [True, True]
    sim.inject_5xx("*", count=2, status=502)
    for _ in range(2):
        status, ctype, body, _ = await raw(sim, "GET", "/api/v1/instances/")
        assert status == 502 and ctype == "text/html" and "Bad Gateway" in body
    sim.inject_5xx("user", count=None, probability=0.0)
    assert (await raw(sim, "GET", "/api/v0/users/current"))[0] == 200
    sim.clear_faults()
    sim.inject_success_false("user", error="oops", msg="nope")
    assert (await raw(sim, "GET", "/api/v0/users/current"))[:3] == (
        200,
        "application/json",
        {"success": False, "error": "oops", "msg": "nope"},
    )
    sim.inject_delay("user", 0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await raw(sim, "GET", "/api/v0/users/current"))[0] == 200
    assert loop.time() - started >= 0.2


async def test_min_interval_rate_limiter(sim):
    sim.enable_rate_limit({"list": 0.3}, style="json", retry_after=1)
    assert (await raw(sim, "GET", "/api/v1/instances/"))[0] == 200
    status, _, body, headers = await raw(sim, "GET", "/api/v1/instances/")
    assert status == 429 and body["error"] == "rate_limit_exceeded" and headers["Retry-After"] == "1"
    assert (await raw(sim, "GET", "/api/v1/instances/", params={"api_key": "x"}, key="other"))[0] == 401
    await asyncio.sleep(0.3)
    assert (await raw(sim, "GET", "/api/v1/instances/"))[0] == 200
    sim.disable_rate_limit()
    assert (await raw(sim, "GET", "/api/v1/instances/"))[0] == 200


# ------------------------------------------------------------------ clock and CLI


async def test_manual_clock():
    clock = ManualClock(start=1000.0)
    assert Clock().now() > 1_700_000_000
    woke: list[float] = []

    async def sleeper(seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(clock.now())

    tasks = [asyncio.create_task(sleeper(s)) for s in (5, 10)]
    await asyncio.sleep(0)
    assert clock.pending_sleepers == 2
    clock.advance(6)
    await asyncio.sleep(0)
    assert woke == [1006.0]
    clock.advance(4)
    await asyncio.gather(*tasks)
    assert woke == [1006.0, 1010.0]
    with pytest.raises(ValueError):
        clock.advance(-1)


async def test_cli_runs_and_enforces_the_key():
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "socialsync.daemon.sim.vast",
        "--port",
        "0",
        "--api-key",
        "cli-key",
        "--boot-seconds",
        "0.3",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"},
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=15)).decode().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", line), line
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"{line}/api/v0/users/current", headers={"Authorization": "Bearer nope"}
            ) as r:
                assert r.status == 401 and (await r.json(content_type=None))["error"] == "auth_error"
            async with http.post(
                f"{line}/api/v0/bundles/", json={"limit": 2}, headers={"Authorization": "Bearer cli-key"}
            ) as r:
                assert r.status == 200 and r.headers["Content-Type"] == "application/json"
                offer = (await r.json())["offers"][0]["id"]
            # A rented instance's 8188/tcp leads to a ComfyUI simulator, as in the demo.
            headers = {"Authorization": "Bearer cli-key"}
            async with http.put(f"{line}/api/v0/asks/{offer}/", headers=headers,
                                json={"image": "comfy", "disk": 20, "env": {"-p 8188:8188": "1"}}) as r:
                assert r.status == 200, await r.text()
                iid = (await r.json())["new_contract"]
            for _ in range(100):
                async with http.get(f"{line}/api/v0/instances/{iid}/", headers=headers) as r:
                    inst = (await r.json())["instances"]
                if inst and inst["actual_status"] == "running" and (inst.get("ports") or {}).get("8188/tcp"):
                    break
                await asyncio.sleep(0.1)
            port = inst["ports"]["8188/tcp"][0]["HostPort"]
            async with http.get(f"http://127.0.0.1:{port}/system_stats") as r:
                assert r.status == 200 and "comfyui_version" in (await r.json())["system"]
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), timeout=10)
    assert proc.returncode == 0, err.decode()
