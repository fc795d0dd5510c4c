"""Migration 008's counters and what reads them: deep pages of generations (the
``generation_blocks`` counts) and the dashboard's kept server snapshot (the ``servers``
change counter).

Every figure is checked against the plain way of getting it: a deep page against the
same page by OFFSET, the block counts against a recount, and the dashboard of a service
that keeps its snapshot against a fresh service that reads everything anew.
"""

from __future__ import annotations

import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from harness import make_settings, running_daemon

from socialsync.daemon import keys
from socialsync.daemon.services.analytics import AnalyticsService, to_ms
from socialsync.daemon.store import generations as gstore
from socialsync.daemon.store.db import Database, builtin_migrations

STATUSES = ("queued", "processing", "completed", "failed", "cancelled")
BLOCK = 1 << gstore.BLOCK_BITS

RECOUNT = """
SELECT server_id, status, id >> 12, count(*) FROM generations WHERE server_id IS NOT NULL GROUP BY 1, 2, 3
"""
RECOUNT_ALL = "SELECT status, id >> 12, count(*) FROM generations GROUP BY 1, 2"


def fill(db_path: Path, rnd: random.Random, ids: list[int], servers: list[int | None]) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.executemany(
            "INSERT INTO generations (id, server_id, prompt, status, created_at) VALUES (?, ?, 'p', ?, ?)",
            ((i, rnd.choice(servers), rnd.choice(STATUSES), "2024-03-15T00:00:00.000Z") for i in ids))


async def counts(db: Database) -> tuple[set, set]:
    per_server = {tuple(r) for r in await db.fetchall(
        "SELECT server_id, status, block, n FROM generation_blocks WHERE n != 0")}
    every = {tuple(r) for r in await db.fetchall("SELECT status, block, n FROM generation_blocks_all WHERE n != 0")}
    return per_server, every


async def recount(db: Database) -> tuple[set, set]:
    return ({tuple(r) for r in await db.fetchall(RECOUNT)}, {tuple(r) for r in await db.fetchall(RECOUNT_ALL)})


async def add_servers(db: Database, ids: list[int]) -> None:
    for sid in ids:
        await db.execute(
            "INSERT INTO servers (id, kind, name, status, created_at, updated_at) "
            "VALUES (?, 'attached', ?, 'running', '2024-03-01T00:00:00.000Z', '2024-03-01T00:00:00.000Z')",
            (sid, f"s{sid}"))


async def test_block_counts_follow_every_change_and_deep_pages_match_offset_pages(tmp_path):
    rnd = random.Random(8)
    db_path = tmp_path / "g.db"
    db = await Database.open(db_path)
    try:
        await add_servers(db, [1, 2, 3])
        ids = sorted(rnd.sample(range(1, 14 * BLOCK), 30_000))  # gaps, and ids on both sides of block edges
        fill(db_path, rnd, ids, [1, 2, 2, 3, None])
        assert await counts(db) == await recount(db)

        # Every kind of change the triggers must follow, by our writer and by another connection.
        await db.execute("UPDATE generations SET status = 'completed' WHERE status = 'processing' AND id % 3 = 0")
        await db.execute("UPDATE generations SET server_id = 3 WHERE server_id IS NULL AND id % 5 = 0")
        await db.execute("UPDATE generations SET server_id = NULL WHERE server_id = 1 AND id % 7 = 0")
        await db.execute("UPDATE generations SET server_id = 2, status = 'failed' WHERE id % 11 = 0")
        await db.execute("UPDATE generations SET progress = 40 WHERE id % 2 = 0")  # not a counted column
        await db.execute("DELETE FROM generations WHERE id % 13 = 0")
        moved = await db.scalar("SELECT max(id) FROM generations")
        await db.execute("UPDATE generations SET id = id + 3 * ? WHERE id = ?", (BLOCK, moved))
        with sqlite3.connect(db_path) as other:
            other.execute("UPDATE generations SET status = 'cancelled' WHERE status = 'queued' AND id % 4 = 1")
        gid = await gstore.insert(db, {"server_id": 1, "prompt": "p", "negative_prompt": "", "parameters": "{}",
                                       "status": "queued", "progress": 0, "priority": 0, "attempts": 0,
                                       "created_at": "2024-03-15T01:00:00.000Z"})
        assert gid == moved + 3 * BLOCK + 1
        assert await counts(db) == await recount(db)

        top = await db.scalar("SELECT max(id) FROM generations")
        before_ids = [BLOCK - 1, BLOCK, BLOCK + 1, 5 * BLOCK, 5 * BLOCK + 17, top, top + 1, 10**9]

        async def same(server_id, status, before_id, limit, offset) -> int:
            on = {"server_id": server_id is not None, "status": status is not None, "before_id": before_id is not None}
            plain = [p for p in (server_id, status, before_id) if p is not None]
            expected = [tuple(r) for r in await db.fetchall(gstore.page_sql(**on), (*plain, limit, offset))]
            named = {"server_id": server_id, "status": status, "before_id": before_id, "limit": limit,
                     "offset": offset}
            deep = [tuple(r) for r in await db.fetchall(gstore.deep_page_sql(**on),
                                                        {k: v for k, v in named.items() if v is not None})]
            served = [tuple(r) for r in await gstore.page(db, server_id=server_id, status=status, limit=limit,
                                                          offset=offset, before_id=before_id)]
            case = (server_id, status, before_id, limit, offset)
            assert deep == expected, case
            assert served == expected, case
            return len(expected)

        found = 0
        for server_id in (None, 1, 2, 3, 9):
            for status in (None, "completed", "queued", "failed"):
                total = len(await db.fetchall(
                    gstore.page_sql(server_id=server_id is not None, status=status is not None, before_id=False),
                    (*[p for p in (server_id, status) if p is not None], 10**9, 0)))
                offsets = {0, 1, 49, total - 1, total, total + 5, gstore.DEEP_OFFSET, gstore.DEEP_OFFSET + 1,
                           *(rnd.randrange(max(1, total + 10)) for _ in range(4))}
                for offset in sorted(o for o in offsets if o >= 0):
                    found += await same(server_id, status, None, rnd.choice([1, 50, 500]), offset)
                for before_id in before_ids:
                    for offset in (0, 3, BLOCK - 1, gstore.DEEP_OFFSET, rnd.randrange(max(1, total + 10))):
                        found += await same(server_id, status, before_id, 50, offset)
        assert found > 10_000  # the cases above did page through rows

        # A deep page walks the index from its block: no sort, no scan of the table.
        plan = " | ".join(r[3] for r in await db.fetchall(
            "EXPLAIN QUERY PLAN " + gstore.deep_page_sql(server_id=True, status=True, before_id=True),
            {"server_id": 1, "status": "failed", "before_id": 10**6, "limit": 50, "offset": 20_000}))
        assert "SCAN generations" not in plan, plan
        assert "COVERING INDEX generations_server_status_id (server_id=? AND status=? AND id<?)" in plan, plan
    finally:
        await db.close()


async def test_migration_counts_the_rows_already_there(tmp_path):
    db_path = tmp_path / "old.db"
    older = [m for m in builtin_migrations() if m.version < 8]
    db = await Database.open(db_path, migrations=older)
    await add_servers(db, [1, 2])
    await db.close()
    fill(db_path, random.Random(3), list(range(1, 3 * BLOCK, 2)), [1, 2, None])
    db = await Database.open(db_path)
    try:
        assert await db.scalar("SELECT max(version) FROM schema_migrations") >= 8
        assert await counts(db) == await recount(db)
        assert await db.scalar("SELECT sum(n) FROM generation_blocks_all") == len(range(1, 3 * BLOCK, 2))
    finally:
        await db.close()


async def test_deep_pages_over_http(tmp_path):
    async with running_daemon(tmp_path / "state") as d, d.session() as api:
        await add_servers(d.app[keys.DB], [1, 2])
        fill(d.settings.db_path, random.Random(5), list(range(1, 40_001)), [1, 1, 1, 2, None])
        with sqlite3.connect(d.settings.db_path) as conn:
            for path, where, args, query in [
                ("/api/generations", "", (), {"offset": 20_000, "limit": 7}),
                ("/api/generations", "", (), {"offset": 39_990}),
                ("/api/generations", "", (), {"offset": 40_000}),
                ("/api/generations", "WHERE server_id = ? AND status = ?", (1, "failed"),
                 {"serverId": 1, "status": "failed", "offset": 3000}),
                ("/api/comfy/1/generations", "WHERE server_id = ?", (1,), {"offset": 17_000, "limit": 20}),
                ("/api/comfy/1/generations", "WHERE server_id = ? AND id < ?", (1, 35_000),
                 {"offset": 16_500, "beforeId": 35_000, "limit": 20}),
            ]:
                limit = query.get("limit", 50)
                expected = [r[0] for r in conn.execute(
                    f"SELECT id FROM generations {where} ORDER BY id DESC LIMIT ? OFFSET ?",
                    (*args, limit, query["offset"]))]
                async with api.get(path, params=query) as r:
                    assert r.status == 200, await r.text()
                    assert [g["id"] for g in await r.json()] == expected, (path, query)
                assert expected or query["offset"] >= 40_000


# -- the dashboard's kept server snapshot -----------------------------------------------

T0 = datetime(2024, 3, 15, 6, 0, tzinfo=UTC)


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


async def seed_fleet(db: Database) -> None:
    day = datetime(2024, 3, 15, tzinfo=UTC)
    servers = [  # id, price, disk, history (hours from the 15th, status)
        (1, "0.50", "0.02", [(-30, "launching"), (-29.5, "running"), (2, "stopped"), (3, "running")]),
        (2, "1.2345", "0.0333", [(-100, "running"), (1, "stopped")]),
        (3, "0.41666666666666663", "0.0011111111111111111", [(4, "launching"), (5.5, "running")]),
        (4, "9.99", "0.50", [(-400, "running"), (-390, "destroyed")]),
    ]
    async with db.transaction() as conn:
        for sid, price, disk, history in servers:
            created = day + timedelta(hours=history[0][0])
            status = history[-1][1]
            await conn.execute(
                "INSERT INTO servers (id, kind, vast_id, name, price_per_hour, disk_cost_per_hour, status, "
                "setup_status, created_at, updated_at, destroyed_at) VALUES (?, 'vast', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sid, 9000 + sid, f"s{sid}", price, disk, status, "ready" if status == "running" else "pending",
                 iso(created), iso(created), iso(day + timedelta(hours=-390)) if status == "destroyed" else None))
            for hours, st in history:
                await conn.execute(
                    "INSERT INTO server_status_history (server_id, at, status, setup_status) VALUES (?, ?, ?, 'ready')",
                    (sid, iso(day + timedelta(hours=hours)), st))
        await conn.execute("INSERT INTO generations (server_id, prompt, status, created_at, completed_at) "
                           "VALUES (1, 'p', 'completed', ?, ?)", (iso(T0 - timedelta(minutes=5)), iso(T0)))


async def test_dashboard_kept_between_changes_equals_a_fresh_read(tmp_path):
    db = await Database.open(tmp_path / "d.db")
    settings = make_settings(tmp_path / "state")
    now = [T0]
    clock = lambda: to_ms(now[0]) / 1000  # noqa: E731
    kept = AnalyticsService(db, settings, None, clock=clock)
    try:
        await seed_fleet(db)

        async def check(moment: datetime) -> dict:
            now[0] = moment
            got = (await kept.stats()).model_dump()
            fresh = AnalyticsService(db, settings, None, clock=clock)
            expected = (await fresh.stats()).model_dump()
            assert got == expected, moment
            spend, again = await kept.spend_now(), await fresh.spend_now()
            assert (spend.today, spend.month, spend.burn, spend.running_burn) == (
                again.today, again.month, again.burn, again.running_burn)
            gauges, fresh_gauges = await kept.gauges(), await fresh.gauges()
            assert gauges == fresh_gauges
            return got

        first = await check(T0)
        snap = kept._snapshot
        later = await check(T0 + timedelta(minutes=17, milliseconds=3))
        assert kept._snapshot is snap  # nothing changed: the spend grew from the kept sums
        assert later["spend"]["today"] != first["spend"]["today"]

        # Generations coming and going, progress, activity stamps: the snapshot stays.
        await db.execute("INSERT INTO generations (server_id, prompt, status, created_at) VALUES (3, 'p', 'queued', ?)",
                         (iso(T0),))
        await db.execute("UPDATE generations SET progress = 30")
        await db.execute("UPDATE servers SET last_activity_at = ?, updated_at = ? WHERE id = 3", (iso(T0), iso(T0)))
        await db.execute("UPDATE servers SET status = status, price_per_hour = price_per_hour")
        await check(T0 + timedelta(minutes=20))
        assert kept._snapshot is snap

        # Each change to what the spend, burn or counts read is seen at once.
        changes = [
            ("INSERT INTO server_status_history (server_id, at, status, setup_status) VALUES (3, ?, 'stopped', 'ready')",
             (iso(T0 + timedelta(minutes=21)),)),
            ("UPDATE servers SET status = 'stopped', setup_status = 'pending' WHERE id = 3", ()),
            ("UPDATE servers SET price_per_hour = '0.75' WHERE id = 1", ()),
            ("UPDATE servers SET disk_cost_per_hour = '0.10' WHERE id = 2", ()),
            ("UPDATE servers SET setup_status = 'installing' WHERE id = 1", ()),
            ("UPDATE server_status_history SET at = ? WHERE server_id = 2 AND status = 'stopped'",
             (iso(T0 - timedelta(hours=5, minutes=30)),)),
            ("DELETE FROM server_status_history WHERE server_id = 1 AND status = 'stopped'", ()),
        ]
        moment = T0 + timedelta(minutes=22)
        for sql, args in changes:
            await db.execute(sql, args)
            moment += timedelta(seconds=41)
            await check(moment)
            assert kept._snapshot is not snap, sql
            snap = kept._snapshot

        # Another connection's write moves the counter too.
        with sqlite3.connect(tmp_path / "d.db") as other:
            other.execute("UPDATE servers SET status = 'running', setup_status = 'ready' WHERE id = 3")
            other.execute("INSERT INTO server_status_history (server_id, at, status, setup_status) "
                          "VALUES (3, ?, 'running', 'ready')", (iso(moment),))
        moment += timedelta(seconds=5)
        await check(moment)
        snap = kept._snapshot

        # A row dated ahead of the snapshot comes into the window as time reaches it.
        await db.execute("INSERT INTO server_status_history (server_id, at, status, setup_status) "
                         "VALUES (2, ?, 'running', 'ready')", (iso(moment + timedelta(minutes=10)),))
        await check(moment + timedelta(minutes=1))
        snap = kept._snapshot
        await check(moment + timedelta(minutes=9))
        assert kept._snapshot is snap
        await check(moment + timedelta(minutes=10, milliseconds=1))
        assert kept._snapshot is not snap

        # A new day starts today's figure afresh; a new month the month's; a clock set back.
        for moment in (datetime(2024, 3, 15, 23, 59, 59, 999000, tzinfo=UTC), datetime(2024, 3, 16, tzinfo=UTC),
                       datetime(2024, 3, 16, 0, 0, 0, 1000, tzinfo=UTC), datetime(2024, 4, 1, 0, 0, 1, tzinfo=UTC),
                       datetime(2024, 3, 15, 7, tzinfo=UTC)):
            await check(moment)
    finally:
        await kept.close()
        await db.close()
