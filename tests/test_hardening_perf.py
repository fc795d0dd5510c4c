"""The server list's response cache (issue 12's performance fix): it is served from
JSON kept until the next committed write, and never stale after one."""

from __future__ import annotations

import pytest
from fleet_helpers import fleet, wait_for
from gen_helpers import attach
from harness import running_daemon

from socialsync.daemon import keys
from socialsync.daemon.sim.comfyui import ComfySim

pytestmark = pytest.mark.timeout(60)


async def test_database_version_counts_commits_only(tmp_path):
    async with running_daemon(tmp_path / "state") as d:
        db = d.app[keys.DB]
        before = db.version
        await db.fetchall("SELECT * FROM servers")
        assert db.version == before
        with pytest.raises(RuntimeError):
            async with db.transaction() as conn:
                await conn.execute("DELETE FROM servers")
                raise RuntimeError("rolled back")
        assert db.version == before
        async with db.transaction() as conn:
            await conn.execute("UPDATE servers SET name = name")
        assert db.version == before + 1


async def test_server_list_is_never_stale(tmp_path):
    sim = ComfySim(tmp_path / "models", step_time=0.0, seed_models=True, base_dir=tmp_path / "comfy")
    await sim.start("127.0.0.1", 0)
    try:
        async with fleet(tmp_path) as (_vast, d), d.session() as api:
            async def names() -> list[str]:
                async with api.get("/api/vast-servers") as r:
                    assert r.status == 200 and r.content_type == "application/json"
                    return [s["name"] for s in await r.json()]
            assert await names() == []
            sid = await attach(api, sim, "first")
            assert await names() == ["first"]
            assert await names() == ["first"]  # served from the cache
            async with api.patch(f"/api/vast-servers/{sid}", json={"name": "renamed"}) as r:
                assert r.status == 200
            assert await names() == ["renamed"]
            # A change made by a background task (not a request) shows up too.
            await sim.kill()

            async def not_ready() -> bool:
                async with api.get("/api/vast-servers") as r:
                    return (await r.json())[0]["setupStatus"] != "ready"
            await wait_for(not_ready, timeout=20)
            async with api.delete(f"/api/vast-servers/{sid}") as r:
                assert r.status == 200
            assert await names() == []
            async with api.get("/api/vast-servers", params={"include": "destroyed"}) as r:
                assert [s["name"] for s in await r.json()] == ["renamed"]
    finally:
        await sim.stop()
