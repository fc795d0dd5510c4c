"""The Vast client against the Vast simulator over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest

from socialsync.daemon.sim.clock import ManualClock
from socialsync.daemon.vast import (
    DestroyOutcome,
    Instance,
    RetryPolicy,
    VastAuthError,
    VastBadRequestError,
    VastClient,
    VastInsufficientCreditError,
    VastNotFoundError,
    VastOfferUnavailableError,
    VastQuotaExceededError,
    VastRateLimitError,
    VastUnavailableError,
    VastUncertainError,
)
from socialsync.daemon.vast.errors import VastProtocolError, error_from_response
from tests.vast_helpers import FAST_RETRY, KEY, gaps, make_client, running_sim

COMFY = "ghcr.io/socialsync/comfyui:0.3.64"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def sim(clock):
    async with running_sim(clock, boot_seconds=30) as s:
        yield s


@pytest.fixture
async def client(sim):
    async with make_client(sim) as c:
        yield c


async def _running_instance(sim, client, clock, label="ss:test") -> int:
    offer = (await client.search_offers(limit=1))[0]
    created = await client.create_instance(offer.id, image=COMFY, label=label)
    clock.advance(31)
    assert (await client.show_instance(created.instance_id)).actual_status == "running"
    return created.instance_id


# ------------------------------------------------------------------ offers


async def test_search_sends_safe_defaults_and_filters(sim, client):
    offers = await client.search_offers(
        {"gpu_name": {"eq": "RTX 4090"}, "num_gpus": {"gte": "1"}}, order=[["dph_total", "asc"]], limit=3
    )
    assert 1 <= len(offers) <= 3
    assert all(o.gpu_name == "RTX 4090" for o in offers)
    prices = [o.dph_total for o in offers]
    assert prices == sorted(prices)
    body = sim.requests_for("bundles")[-1].json
    assert body["verified"] == {"eq": True} and body["rentable"] == {"eq": True}
    assert body["rented"] == {"eq": False} and body["external"] == {"eq": False}
    assert body["type"] == "on-demand" and body["limit"] == 3 and body["order"] == [["dph_total", "asc"]]
    everything = await client.search_offers()
    assert everything and all(
        o.verification == "verified" and o.rentable and not o.rented and not o.external for o in everything
    )


async def test_search_floors_and_caller_overrides(sim):
    async with make_client(sim, min_reliability=0.95, min_direct_ports=100) as c:
        offers = await c.search_offers()
        assert offers and all(o.reliability >= 0.95 and o.direct_port_count >= 100 for o in offers)
        body = sim.requests_for("bundles")[-1].json
        assert body["reliability"] == {"gte": 0.95} and body["direct_port_count"] == {"gte": 100}
        wider = await c.search_offers({"verified": {"eq": "any"}, "reliability": {"gte": 0}})
        assert any(o.verification == "unverified" for o in wider)


async def test_search_numeric_strings_wildcard_and_storage(client):
    eight = await client.search_offers({"num_gpus": {"eq": "8"}})
    assert eight and all(o.num_gpus == 8 for o in eight)
    assert len(await client.search_offers({"gpu_name": {"eq": "any"}})) == len(await client.search_offers())
    cheap = await client.search_offers({"id": {"eq": eight[0].id}}, allocated_storage=10)
    dear = await client.search_offers({"id": {"eq": eight[0].id}}, allocated_storage=60)
    assert dear[0].dph_total > cheap[0].dph_total
    bids = await client.search_offers({"id": {"eq": eight[0].id}}, type="bid")
    assert bids[0].is_bid and bids[0].dph_total < cheap[0].dph_total


async def test_get_offer(sim, client):
    rented = next(o for o in sim.offers.values() if o["rented"])
    found = await client.get_offer(rented["id"])
    assert found is not None and found.id == rented["id"] and found.rented is True
    assert await client.get_offer(1) is None


# ------------------------------------------------------------------ create → running


async def test_create_boots_to_running_with_ports(sim, client, clock):
    offer = (await client.search_offers({"gpu_name": {"eq": "RTX 3090"}}, limit=1))[0]
    created = await client.create_instance(
        offer.id, image=COMFY, label="ss:abc", env={"HF_HOME": "/w"}, onstart="bash /start.sh", disk=20
    )
    assert created.instance_id > 0 and created.instance_api_key
    assert created.instance_api_key not in repr(created)

    put = sim.requests_for("create")[-1]
    assert put.method == "PUT" and put.path == f"/api/v0/asks/{offer.id}/"
    assert put.json["client_id"] == "me" and put.json["image"] == COMFY and put.json["label"] == "ss:abc"
    assert put.json["env"] == {"HF_HOME": "/w", "-p 8188:8188": "1"}
    assert put.json["runtype"] == "ssh_direc ssh_proxy" and put.json["disk"] == 20.0
    assert put.json["onstart"] == "bash /start.sh"
    assert put.headers["Authorization"] == f"Bearer {KEY}"
    assert put.user_agent.startswith("socialsync/")
    assert "api_key" not in put.query

    inst = await client.show_instance(created.instance_id)
    assert inst.actual_status is None and inst.intended_status == "running" and inst.ports is None
    clock.advance(10)
    inst = await client.show_instance(created.instance_id)
    assert inst.actual_status == "loading"
    assert any(word in inst.status_msg for word in ("Pull", "Download"))
    clock.advance(25)
    inst = await client.show_instance(created.instance_id)
    assert inst.actual_status == "running" and inst.status_msg.startswith("success")
    assert inst.label == "ss:abc" and inst.env["-p 8188:8188"] == "1"
    host, port = inst.public_endpoint(8188)
    assert host == "127.0.0.1" and offer.raw["direct_port_start"] <= port <= offer.raw["direct_port_end"]
    assert inst.ssh_endpoint() is not None and inst.ssh_host == "127.0.0.1" and inst.ssh_port
    assert isinstance(inst.ports["8188/tcp"][0].host_port, str)  # Vast sends HostPort as a string
    assert sim.requests_for("show")[-1].query == {"owner": "me"}


async def test_create_offer_taken_or_unavailable(sim, client):
    offer = await client.search_offers(limit=2)
    await client.create_instance(offer[0].id, image=COMFY, label="ss:1")
    with pytest.raises(VastOfferUnavailableError) as taken:
        await client.create_instance(offer[0].id, image=COMFY, label="ss:2")
    assert taken.value.status == 404 and "no_such_ask" in taken.value.msg
    sim.unavailable_offers.add(offer[1].id)
    with pytest.raises(VastOfferUnavailableError) as gone:
        await client.create_instance(offer[1].id, image=COMFY, label="ss:3")
    assert gone.value.status == 410 and gone.value.error_code == "no_such_ask"
    assert len(sim.requests_for("create")) == 3  # never retried


async def test_create_refusals_are_typed_and_not_retried(sim, client):
    offer = (await client.search_offers(limit=1))[0]
    sim.inject_create_error("invalid_price", "error 400/3468: bid price too low")
    with pytest.raises(VastBadRequestError) as bad:
        await client.create_instance(offer.id, image=COMFY, label="ss:x", price=0.01)
    assert bad.value.error_code == "invalid_price"
    sim.create_credit_failure = True
    with pytest.raises(VastInsufficientCreditError):
        await client.create_instance(offer.id, image=COMFY, label="ss:x")
    assert len(sim.requests_for("create")) == 2
    with pytest.raises(ValueError):
        await client.create_instance(offer.id, image=COMFY, label="x" * 300)


@pytest.mark.parametrize("fault", ["5xx", "reset_before", "reset_after", "5xx_after"])
async def test_create_never_blindly_retried(sim, client, fault):
    offer = (await client.search_offers(limit=1))[0]
    if fault == "5xx":
        sim.inject_5xx("create", count=3, status=502)
    elif fault == "5xx_after":
        sim.inject_5xx("create", count=1, status=504, when="after")
    else:
        sim.inject_reset("create", when=fault.removeprefix("reset_"))
    with pytest.raises(VastUncertainError) as exc:
        await client.create_instance(offer.id, image=COMFY, label="ss:maybe")
    assert exc.value.label == "ss:maybe" and exc.value.offer_id == offer.id
    assert len(sim.requests_for("create")) == 1
    # The caller reconciles by label: after an "after" fault the instance exists.
    found = await client.list_instances({"label": {"eq": "ss:maybe"}})
    assert len(found.instances) == (1 if fault.endswith("after") else 0)


async def test_create_retried_after_429_only(sim, client):
    offer = (await client.search_offers(limit=1))[0]
    sim.inject_rate_limit("create", style="detail", retry_after=0.2)
    created = await client.create_instance(offer.id, image=COMFY, label="ss:429")
    puts = sim.requests_for("create")
    assert [r.status for r in puts] == [429, 200] and created.instance_id
    assert gaps(puts)[0] >= 0.2


async def test_create_connect_refused_is_certain(sim):
    async with VastClient(KEY, base_url="http://127.0.0.1:9", pacing={}, retry=FAST_RETRY) as c:
        with pytest.raises(VastUnavailableError) as exc:
            await c.create_instance(123, image=COMFY, label="ss:x")
    assert exc.value.error_code == "connect_failed" and not isinstance(exc.value, VastUncertainError)


# ------------------------------------------------------------------ lifecycle


async def test_stop_start_reboot_destroy(sim, client, clock):
    iid = await _running_instance(sim, client, clock)
    assert (await client.show_instance(iid)).actual_status == "running"

    await client.stop_instance(iid)
    inst = await client.show_instance(iid)
    assert inst.intended_status == "stopped" and inst.actual_status == "stopped" and inst.ports is None
    assert sim.requests_for("manage")[-1].json == {"state": "stopped"}

    await client.start_instance(iid)
    assert (await client.show_instance(iid)).actual_status == "loading"
    clock.advance(16)
    assert (await client.show_instance(iid)).actual_status == "running"

    await client.reboot_instance(iid)
    assert (await client.show_instance(iid)).actual_status == "rebooting"
    assert sim.requests_for("reboot")[-1].json == {}
    clock.advance(6)
    inst = await client.show_instance(iid)
    assert inst.actual_status == "running" and inst.host_port(8188)

    await client.set_label(iid, "ss:renamed")
    assert (await client.show_instance(iid)).label == "ss:renamed"

    assert await client.destroy_instance(iid) == DestroyOutcome.DESTROYED
    delete = sim.requests_for("destroy")[-1]
    assert delete.method == "DELETE" and delete.json == {}
    assert await client.show_instance(iid) is None
    assert await client.destroy_instance(iid) == DestroyOutcome.ALREADY_GONE
    assert (await client.list_instances()).instances == []
    sim.show_missing = "404"
    assert await client.show_instance(iid) is None
    with pytest.raises(VastNotFoundError):
        await client.stop_instance(iid)


async def test_logs_ssh_key_and_user(sim, client, clock):
    iid = await _running_instance(sim, client, clock)
    sim.append_log(iid, "comfy: loading models", "comfy: ERROR missing node", "comfy: ready on 8188")
    text = await client.request_logs(iid, tail=2)
    assert text.splitlines() == ["comfy: ERROR missing node", "comfy: ready on 8188"]
    assert sim.requests_for("request_logs")[-1].json == {"tail": "2"}
    fetches = sim.requests_for("logs_fetch")
    assert [r.status for r in fetches] == [404, 404, 200]
    assert all("Authorization" not in r.headers for r in fetches)
    assert (await client.request_logs(iid, filter="ERROR")).strip() == "comfy: ERROR missing node"

    await client.attach_ssh_key(iid, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOx ops@socialsync")
    assert sim.instances[iid].ssh_keys == ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOx ops@socialsync"]
    with pytest.raises(ValueError):
        await client.attach_ssh_key(iid, "not a key")

    user = await client.current_user()
    assert user.email == "sim@example.invalid" and user.credit == pytest.approx(sim.credit, abs=1e-3)
    assert "api_key" not in user.raw and KEY not in repr(user)


async def test_logs_never_ready_is_bounded(sim, clock):
    sim.logs_not_ready_polls = 100
    async with make_client(sim, logs_poll_attempts=3) as c:
        iid = await _running_instance(sim, c, clock)
        with pytest.raises(VastUnavailableError) as exc:
            await c.request_logs(iid)
    assert exc.value.error_code == "logs_timeout" and len(sim.requests_for("logs_fetch")) == 3


# ------------------------------------------------------------------ listing


async def test_list_pages_sixty_instances_in_three_calls(sim, client):
    ids = [sim.add_instance(label="ss:fleet" if n % 2 else "other") for n in range(60)]
    result = await client.list_instances()
    assert [i.id for i in result.instances] == sorted(ids)
    assert result.pages == 3 and client.last_list_pages == 3 and result.total == 60
    calls = sim.requests_for("list")
    assert len(calls) == 3
    assert "after_token" not in calls[0].query and all(c.query.get("after_token") for c in calls[1:])
    for call in calls:
        assert json.loads(call.query["order_by"]) == [{"col": "id", "dir": "asc"}]
        assert call.query["limit"] == "25" and json.loads(call.query["select_filters"]) == {}
    ours = await client.list_instances({"label": {"eq": "ss:fleet"}})
    assert len(ours.instances) == 30 and ours.pages == 2
    assert all(i.label == "ss:fleet" for i in ours)


# ------------------------------------------------------------------ retries and errors


async def test_5xx_burst_retried_with_exponential_backoff(sim, client):
    sim.inject_5xx("list", count=2, status=503)
    assert (await client.list_instances()).instances == []
    calls = sim.requests_for("list")
    assert [c.status for c in calls] == [503, 503, 200]
    first, second = gaps(calls)
    assert 0.05 <= first < 0.5 and 0.1 <= second < 0.6


@pytest.mark.parametrize("style", ["text", "text_threshold", "detail", "json"])
async def test_429_styles_retried(sim, client, style):
    sim.inject_rate_limit("show", style=style, count=2)
    assert await client.show_instance(12345) is None
    assert [c.status for c in sim.requests_for("show")] == [429, 429, 200]
    assert gaps(sim.requests_for("show"))[1] >= 0.1


@pytest.mark.parametrize("style", ["text", "detail", "json"])
async def test_429_retry_after_honoured(sim, client, style):
    sim.inject_rate_limit("list", style=style, retry_after=0.4)
    await client.list_instances()
    calls = sim.requests_for("list")
    assert [c.status for c in calls] == [429, 200]
    assert gaps(calls)[0] >= 0.4


async def test_429_retry_after_over_60_raises_at_once(sim, client):
    sim.inject_rate_limit("list", style="json", retry_after=120)
    with pytest.raises(VastRateLimitError) as exc:
        await client.list_instances()
    assert exc.value.retry_after == 120 and len(sim.requests_for("list")) == 1


async def test_429_exhausted_and_quota(sim, client):
    sim.inject_rate_limit("show", style="detail", count=None)
    with pytest.raises(VastRateLimitError):
        await client.show_instance(1)
    assert len(sim.requests_for("show")) == FAST_RETRY.max_attempts
    sim.clear_faults()
    sim.inject_rate_limit("bundles", style="quota", count=None, reset_at=1_767_312_000)
    with pytest.raises(VastQuotaExceededError) as exc:
        await client.search_offers()
    assert exc.value.reset_at == 1_767_312_000 and len(sim.requests_for("bundles")) == 1


async def test_deadline_stops_retrying(sim):
    policy = RetryPolicy(max_attempts=10, base=0.2, factor=2, jitter=0, deadline=0.5)
    async with make_client(sim, retry=policy) as c:
        sim.inject_5xx("list", count=None)
        with pytest.raises(VastUnavailableError):
            await c.list_instances()
    assert len(sim.requests_for("list")) == 2  # 0.2 s fits the deadline, the next 0.4 s does not


async def test_no_retry_on_other_4xx(sim, client):
    with pytest.raises(VastBadRequestError) as bad:
        await client.list_instances({"dph_total": {"lt": 1}})
    assert bad.value.status == 400 and bad.value.error_code == "invalid_request"
    assert len(sim.requests_for("list")) == 1
    with pytest.raises(VastNotFoundError):
        await client.set_label(424242, "x")
    assert len(sim.requests_for("manage")) == 1
    async with make_client(sim, api_key="wrong-key") as wrong:
        with pytest.raises(VastAuthError) as auth:
            await wrong.current_user()
    assert auth.value.status == 401 and auth.value.msg == "Invalid user key"
    assert len(sim.requests_for("user")) == 1


async def test_transport_failures_retried_for_idempotent_calls(sim):
    policy = RetryPolicy(max_attempts=2, base=0.05, jitter=0)
    async with make_client(sim, timeout=0.25, retry=policy) as c:
        sim.inject_reset("list")
        await c.list_instances()
        assert [r.reset for r in sim.requests_for("list")] == [True, False]
        sim.inject_delay("show", 0.6)
        assert await c.show_instance(5) is None
        assert len(sim.requests_for("show")) == 2
        sim.inject_delay("user", 0.6, count=None)
        with pytest.raises(VastUnavailableError) as exc:
            await c.current_user()
    assert exc.value.error_code == "timeout"


async def test_success_false_raises(sim, client, clock):
    iid = await _running_instance(sim, client, clock)
    sim.inject_success_false("manage", error="missing_billing", msg="Add a payment method first.")
    with pytest.raises(VastInsufficientCreditError) as exc:  # reference §7: billing missing (stop/start)
        await client.stop_instance(iid)
    assert exc.value.status == 200 and exc.value.error_code == "missing_billing"
    assert sim.instances[iid].intended == "running"
    sim.inject_success_false("destroy", error="no_such_instance", msg=f"Instance {iid} not found.")
    assert await client.destroy_instance(iid) == DestroyOutcome.ALREADY_GONE


def test_error_shapes_are_parsed():
    e = error_from_response(429, "API requests too frequent: endpoint threshold=1.0", {"Retry-After": "2"})
    assert isinstance(e, VastRateLimitError) and e.retry_after == 2 and "too frequent" in e.msg
    e = error_from_response(429, json.dumps({"detail": "API requests too frequent endpoint threshold=1.0"}))
    assert isinstance(e, VastRateLimitError) and e.retry_after is None and e.retryable
    e = error_from_response(404, json.dumps({"success": False, "msg": "Invalid user key"}))
    assert isinstance(e, VastAuthError)
    e = error_from_response(400, json.dumps({"error": "invalid_args", "message": "bad disk"}))
    assert isinstance(e, VastBadRequestError) and e.msg == "bad disk"
    e = error_from_response(411, json.dumps({"success": False, "msg": "insufficient credit"}))
    assert isinstance(e, VastInsufficientCreditError)
    e = error_from_response(502, "<html><body><h1>502 Bad Gateway</h1></body></html>")
    assert isinstance(e, VastUnavailableError) and e.retryable and "502" in e.msg
    e = error_from_response(500, "")
    assert isinstance(e, VastUnavailableError) and not e.retryable
    e = error_from_response(
        404,
        json.dumps(
            {
                "success": False,
                "error": "invalid_args",
                "msg": "error 404/3603: no_such_ask Instance type by id 7 is not available.",
                "ask_id": 7,
            }
        ),
    )
    assert isinstance(e, VastOfferUnavailableError)
    e = error_from_response(
        404, json.dumps({"success": False, "error": "not_found", "msg": "Instance not found"})
    )
    assert isinstance(e, VastNotFoundError)
    e = error_from_response(403, "[1, 2]")
    assert isinstance(e, VastAuthError)


async def test_non_json_success_is_a_protocol_error(sim, client):
    sim.inject_status("user", 200, body="<html>maintenance</html>")
    with pytest.raises(VastProtocolError):
        await client.current_user()


# ------------------------------------------------------------------ hygiene


async def test_api_key_never_leaks(sim, client, clock, caplog):
    caplog.set_level(logging.DEBUG, logger="socialsync")
    assert KEY not in repr(client) and KEY not in str(client) and KEY not in repr(vars(client))
    iid = await _running_instance(sim, client, clock)
    sim.inject_status(
        "manage", 400, body={"success": False, "error": "invalid_args", "msg": f"bad key {KEY}"}
    )
    with pytest.raises(VastBadRequestError) as exc:
        await client.stop_instance(iid)
    assert KEY not in str(exc.value) and KEY not in repr(exc.value) and "***" in exc.value.msg
    sim.inject_5xx("list", count=1)
    await client.list_instances()
    user = await client.current_user()  # the sim echoes the key in this answer, like Vast
    assert KEY not in repr(user) and KEY not in json.dumps(user.raw)
    async with make_client(sim, api_key="wrong" + KEY) as wrong:
        with pytest.raises(VastAuthError) as auth:
            await wrong.list_instances()
        assert KEY not in str(auth.value)
    assert caplog.records and KEY not in caplog.text
    assert all(KEY not in r.path and KEY not in json.dumps(r.query) for r in sim.requests)


async def test_on_call_hook_sees_every_attempt(sim):
    seen: list[tuple[str, str, float]] = []
    async with make_client(sim, on_call=lambda e, o, s: seen.append((e, o, s))) as c:
        sim.inject_5xx("list", count=1)
        await c.list_instances()
        sim.inject_rate_limit("show", style="text")
        await c.show_instance(1)
        with pytest.raises(VastNotFoundError):
            await c.stop_instance(1)
    assert [(e, o) for e, o, _ in seen] == [
        ("list", "server_error"),
        ("list", "ok"),
        ("show", "rate_limited"),
        ("show", "ok"),
        ("manage", "client_error"),
    ]
    assert all(s >= 0 for _, _, s in seen)


async def test_pacing_spaces_calls_without_blocking_the_loop(sim):
    async with make_client(sim, pacing={"show": 0.3}) as c:
        show_two = asyncio.gather(c.show_instance(1), c.show_instance(2))
        await asyncio.sleep(0.05)
        await c.list_instances()  # another endpoint is not held up meanwhile
        await show_two
    shows, lists = sim.requests_for("show"), sim.requests_for("list")
    assert gaps(shows)[0] >= 0.29
    assert shows[0].mono < lists[0].mono < shows[1].mono


async def test_shared_session_is_left_open(sim):
    async with aiohttp.ClientSession() as session:
        c = VastClient(KEY, base_url=sim.base_url, session=session, pacing={})
        await c.list_instances()
        await c.close()
        assert not session.closed
        await c.list_instances()


def test_an_impossible_host_port_is_no_endpoint():
    """A binding outside 1..65535 is no port a client could connect to: no ComfyUI URL from it."""
    inst = Instance.model_validate({"id": 1, "public_ipaddr": "203.0.113.9", "ports": {
        "8188/tcp": [{"HostIp": "0.0.0.0", "HostPort": "419000"}], "22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "0"}],
        "8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41000"}]}})
    assert inst.public_endpoint(8188) is None and inst.public_endpoint(22) is None
    assert inst.public_endpoint(8080) == ("203.0.113.9", 41000)

