"""Fuzzing in CI (issue 12): a short schemathesis run over /api/openapi.json against a
real daemon process and the simulators (``tests/reliability/fuzz.py`` runs the long
one), and the bugs earlier runs found, pinned down."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fleet_helpers import fleet

sys.path.insert(0, str(Path(__file__).resolve().parent / "reliability"))
from fuzz import fuzz

pytestmark = pytest.mark.timeout(90)


async def test_short_schemathesis_run_finds_nothing(tmp_path):
    result = await fuzz(examples=3, seed=12, long=False, tmp=tmp_path, phases="examples,fuzzing")
    print("\n".join(result["summary"]))
    assert result["tracebacks"] == 0, result["log"][-5000:]
    assert result["rc"] == (0, 0), result["output"][-8000:]


async def test_a_bad_offer_id_is_a_400_not_a_500(tmp_path):
    """Found by schemathesis: ``{"offerId": false}`` reached the Vast client's own check
    and came back as a 500."""
    async with fleet(tmp_path) as (sim, d), d.session() as api:
        for offer_id in (False, True, 0, -3, "abc", "", "0", 1.5, None):
            async with api.post("/api/vast-servers", json={"offerId": offer_id}) as r:
                body = await r.json()
                assert r.status == 400, (offer_id, body)
                assert body["code"] == "VALIDATION_ERROR"
        assert sim.requests_for("create") == []


async def test_refusals_the_fuzzer_saw_are_documented(tmp_path):
    """Found by schemathesis: 401 from login, 404 from /api/generations?serverId=,
    409 from revoking a revoked key were missing from the OpenAPI document."""
    async with fleet(tmp_path) as (_sim, d), d.session() as api:
        async with api.get("/api/openapi.json") as r:
            doc = await r.json()
        async with api.post("/api/auth/login", json={"username": "x", "password": "y"}) as r:
            assert r.status == 401
        async with api.get("/api/generations", params={"serverId": 999}) as r:
            assert r.status == 404
        async with api.post("/api/api-keys", json={"name": "k", "role": "viewer"}) as r:
            kid = (await r.json())["id"]
        async with api.delete(f"/api/api-keys/{kid}") as r:
            assert r.status == 200
        async with api.delete(f"/api/api-keys/{kid}") as r:
            assert r.status == 409
    paths = doc["paths"]
    assert "401" in paths["/api/auth/login"]["post"]["responses"]
    assert "404" in paths["/api/generations"]["get"]["responses"]
    assert "409" in paths["/api/api-keys/{id}"]["delete"]["responses"]
