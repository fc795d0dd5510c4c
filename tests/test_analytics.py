"""Analytics and the dashboard over real HTTP, from hand-made rows whose every figure is
computed by hand below (times UTC, 2024-03-15 unless said otherwise).

Servers (price = dph_total $/h, disk = storage $/h):

- A  vast  0.50 / 0.02  launching 00:00, loading 00:10, running 00:30, stopped 02:30,
                        running 03:00, destroyed 04:00
- B  vast  1.25 / 0.05  created 03-14 23:00 launching, running 23:30, stopped 05:00
- C  attached           running 01:00 (ready), costs nothing
- D  vast  9.99 / 0.50  lived and died in February: never in a March window
- E  vast  0.10 / 0.00  running 03-10 00:00, destroyed 03-10 10:00   ($1.00, in March only)
- F  vast  0.80 / 0.04  launching 05:20, running 05:30 (ready)

Window [00:00, 06:00):
- A: running 00:30-02:30 + 03:00-04:00 = 3 h → 1.50; other 00:00-00:30 + 02:30-03:00 = 1 h
     → 0.02; cost 1.52; lifetime 4 h; uptime 75 %.
- B: running 00:00-05:00 = 5 h → 6.25; stopped 05:00-06:00 → 0.05; cost 6.30; uptime 83.33 %.
- C: running 01:00-06:00 = 5 h, cost 0, uptime 100 %.
- F: launching 05:20-05:30 → 0.04/6 = 0.00666…; running 05:30-06:00 → 0.40; cost 0.40666…
Fleet: 7.8266…; running 13.5 h; lifetime 15 h 40 min → uptime 86.17 %.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from harness import running_daemon

from socialsync.common.money import money
from socialsync.daemon import keys
from socialsync.daemon.services.analytics import to_ms

DAY = "2024-03-15"
A, B, C, D, E, F = 1, 2, 3, 4, 5, 6


def t(hhmm: str, day: str = DAY) -> str:
    return f"{day}T{hhmm}:00.000Z"


SERVERS = [
    # id, kind, name, price, disk, status, setup, created, destroyed
    (A, "vast", "alpha", "0.50", "0.02", "destroyed", "pending", t("00:00"), t("04:00")),
    (B, "vast", "bravo", "1.25", "0.05", "stopped", "pending", t("23:00", "2024-03-14"), None),
    (C, "attached", "home", None, None, "running", "ready", t("01:00"), None),
    (D, "vast", "delta", "9.99", "0.50", "destroyed", "pending", t("00:00", "2024-02-01"), t("05:00", "2024-02-01")),
    (E, "vast", "echo", "0.10", "0.00", "destroyed", "pending", t("00:00", "2024-03-10"), t("10:00", "2024-03-10")),
    (F, "vast", "foxtrot", "0.80", "0.04", "running", "ready", t("05:20"), None),
]
HISTORY = [
    (A, t("00:00"), "launching"), (A, t("00:10"), "loading"), (A, t("00:30"), "running"),
    (A, t("02:30"), "stopped"), (A, t("03:00"), "running"), (A, t("04:00"), "destroyed"),
    (B, t("23:00", "2024-03-14"), "launching"), (B, t("23:30", "2024-03-14"), "running"), (B, t("05:00"), "stopped"),
    (C, t("01:00"), "running"),
    (D, t("00:00", "2024-02-01"), "running"), (D, t("05:00", "2024-02-01"), "destroyed"),
    (E, t("00:00", "2024-03-10"), "running"), (E, t("10:00", "2024-03-10"), "destroyed"),
    (F, t("05:20"), "launching"), (F, t("05:30"), "running"),
]
# server, created, status, duration ms, completed at, images
GENERATIONS = [
    (A, "00:40", "completed", 1000, "00:41", 2),
    (A, "00:50", "completed", 2000, "00:51", 2),
    (A, "01:10", "completed", 3000, "01:11", 2),
    (A, "01:20", "completed", 10000, "01:21", 1),
    (A, "01:30", "failed", None, "01:31", 0),
    (A, "03:10", "cancelled", None, "03:11", 0),
    (A, "06:30", "completed", 99999, "06:31", 5),  # after the window
    (B, "02:05", "completed", 500, "02:06", 1),
    (B, "02:15", "completed", 1500, "02:16", 1),
    (B, "02:25", "completed", 2500, "02:26", 1),
    (B, "04:10", "failed", None, "05:10", 0),  # failed within the last hour at 06:00
    (B, "05:30", "queued", None, None, 0),
    (F, "05:45", "processing", None, None, 0),
    (E, "03:00", "completed", 4000, "03:01", 1),  # on 03-10: outside the window
]


async def seed(db) -> None:
    async with db.transaction() as conn:
        for sid, kind, name, price, disk, status, setup, created, destroyed in SERVERS:
            await conn.execute(
                "INSERT INTO servers (id, kind, name, price_per_hour, disk_cost_per_hour, status, setup_status, "
                "created_at, updated_at, destroyed_at, vast_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sid, kind, name, price, disk, status, setup, created, created, destroyed,
                 None if kind == "attached" else 9000 + sid))
        for sid, at, status in HISTORY:
            setup = "ready" if sid in (C, F) and status == "running" else "pending"
            await conn.execute(
                "INSERT INTO server_status_history (server_id, at, status, setup_status) VALUES (?, ?, ?, ?)",
                (sid, at, status, setup))
        for sid, created, status, duration, completed, images in GENERATIONS:
            day = "2024-03-10" if sid == E else DAY
            cur = await conn.execute(
                "INSERT INTO generations (server_id, prompt, status, created_at, completed_at, duration_ms) "
                "VALUES (?, 'a cat', ?, ?, ?, ?)",
                (sid, status, t(created, day), t(completed, day) if completed else None, duration))
            for i in range(images):
                await conn.execute(
                    "INSERT INTO generation_images (generation_id, filename, path, content_type, size, sha256, "
                    "created_at) VALUES (?, ?, ?, 'image/png', 1, 'x', ?)",
                    (cur.lastrowid, f"{i}.png", f"/x/{i}.png", t(created, day)))


async def analytics(api, **params) -> dict:
    async with api.get("/api/server-analytics", params=params) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def by_id(body: dict) -> dict[int, dict]:
    return {s["serverId"]: s for s in body["servers"]}


F_COST = Decimal("0.04") / 6 + Decimal("0.40")
FLEET_COST = Decimal("1.52") + Decimal("6.30") + F_COST


async def test_server_analytics_exact_figures(tmp_path):
    async with running_daemon(tmp_path / "state") as d, d.session() as api:
        await seed(d.app[keys.DB])
        body = await analytics(api, since=t("00:00"), until=t("06:00"))
        assert body["since"].startswith("2024-03-15T00:00:00") and body["until"].startswith("2024-03-15T06:00:00")
        assert body["bucket"] == "hour" and body["durationSampleEvery"] == 1
        servers = by_id(body)
        assert set(servers) == {A, B, C, F}  # D died in February, E on 03-10

        a = servers[A]
        assert (a["name"], a["kind"], a["status"], a["pricePerHour"]) == ("alpha", "vast", "destroyed", "0.50")
        assert a["runningSeconds"] == 3 * 3600 and a["runningHours"] == 3.0
        assert a["lifetimeSeconds"] == 4 * 3600 and a["uptimePercent"] == 75.0
        assert (a["cost"], a["runningCost"], a["storageCost"]) == ("1.52", "1.50", "0.02")
        assert a["costPerGeneration"] == "0.38"  # 1.52 / 4 completed
        ga = a["generations"]
        assert (ga["total"], ga["completed"], ga["failed"], ga["cancelled"], ga["queued"]) == (6, 4, 1, 1, 0)
        assert ga["successRate"] == 0.8 and ga["images"] == 7
        assert (ga["durationP50Ms"], ga["durationP95Ms"]) == (2000, 10000)  # nearest rank of 1,2,3,10 s

        b = servers[B]
        assert b["runningHours"] == 5.0 and b["lifetimeSeconds"] == 6 * 3600 and b["uptimePercent"] == 83.33
        assert (b["cost"], b["runningCost"], b["storageCost"]) == ("6.30", "6.25", "0.05")
        gb = b["generations"]
        assert (gb["total"], gb["completed"], gb["failed"], gb["queued"], gb["images"]) == (5, 3, 1, 1, 3)
        assert gb["successRate"] == 0.75 and (gb["durationP50Ms"], gb["durationP95Ms"]) == (1500, 2500)
        assert b["costPerGeneration"] == "2.10"

        c = servers[C]
        assert c["kind"] == "attached" and c["cost"] == "0.00" and c["runningHours"] == 5.0
        assert c["uptimePercent"] == 100.0 and c["costPerGeneration"] is None
        assert c["generations"]["total"] == 0 and c["generations"]["successRate"] is None

        f = servers[F]
        assert f["runningSeconds"] == 1800 and f["lifetimeSeconds"] == 2400 and f["uptimePercent"] == 75.0
        assert f["cost"] == money(F_COST) == "0.4067" and f["storageCost"] == "0.0067"
        assert f["generations"]["processing"] == 1 and f["costPerGeneration"] is None

        fleet = body["fleet"]
        assert fleet["servers"] == 4
        assert fleet["cost"] == money(FLEET_COST) == "8.2267"
        assert fleet["runningCost"] == "8.15" and fleet["storageCost"] == money(Decimal("0.07") + Decimal("0.04") / 6)
        assert fleet["runningHours"] == 13.5 and fleet["lifetimeSeconds"] == 15 * 3600 + 40 * 60
        assert fleet["uptimePercent"] == round(100 * 13.5 / (15 + 40 / 60), 2) == 86.17
        fg = fleet["generations"]
        assert (fg["total"], fg["completed"], fg["failed"], fg["cancelled"], fg["queued"], fg["processing"]) == \
            (12, 7, 2, 1, 1, 1)
        assert fg["successRate"] == round(7 / 9, 4) and fg["images"] == 10
        # 0.5 1 1.5 2 2.5 3 10 s: rank 4 and rank 7
        assert (fg["durationP50Ms"], fg["durationP95Ms"]) == (2000, 10000)
        assert fleet["costPerGeneration"] == money(FLEET_COST / 7) == "1.1752"

        series = body["series"]
        assert [p["start"][:13] for p in series] == [f"{DAY}T0{h}" for h in range(6)]
        assert [p["spend"] for p in series] == [
            "1.51",  # A 0.01 disk + 0.25 running; B 1.25
            "1.75",  # A 0.50; B 1.25
            "1.51",  # A 0.25 running + 0.01 stopped; B 1.25
            "1.75",  # A 0.50; B 1.25
            "1.25",  # B
            money(Decimal("0.05") + F_COST),  # B stopped 0.05; F 0.0067 launching + 0.40 running
        ]
        assert sum(Decimal(p["spend"]) for p in series) == Decimal("8.2267")
        assert [p["generations"] for p in series] == [2, 3, 3, 1, 1, 2]
        assert [p["completed"] for p in series] == [2, 2, 3, 0, 0, 0]
        assert [p["failed"] for p in series] == [0, 1, 0, 0, 1, 0]


async def test_server_filter_clipping_and_daily_buckets(tmp_path):
    async with running_daemon(tmp_path / "state") as d, d.session() as api:
        await seed(d.app[keys.DB])
        # One server, a window that starts mid-run: the row before `since` says it was running.
        body = await analytics(api, since=t("01:00"), until=t("03:30"), serverId=str(A))
        assert [s["serverId"] for s in body["servers"]] == [A]
        a = body["servers"][0]
        assert a["runningSeconds"] == 2 * 3600 and a["lifetimeSeconds"] == 2.5 * 3600  # 1:00-2:30, 3:00-3:30
        assert (a["cost"], a["storageCost"]) == ("1.01", "0.01")
        assert body["fleet"]["cost"] == "1.01" and body["fleet"]["servers"] == 1
        assert a["generations"]["total"] == 4  # 01:10, 01:20, 01:30, 03:10
        assert [p["spend"] for p in body["series"]] == ["0.50", "0.26", "0.25"]  # 1:00, 2:00, 3:00 (to 3:30)

        # March 1-16 by day: E's $1.00 on the 10th, B's evening of the 14th, the 15th as above.
        body = await analytics(api, since="2024-03-01T00:00:00Z", until=t("06:00"))
        assert body["bucket"] == "day" and len(body["series"]) == 15
        spend = {p["start"][:10]: p["spend"] for p in body["series"]}
        assert spend["2024-03-10"] == "1.00"
        assert spend["2024-03-14"] == "0.65"  # launching 23:00-23:30 0.025 + running 23:30-24:00 0.625
        assert spend["2024-03-15"] == "8.2267"
        assert body["fleet"]["cost"] == money(FLEET_COST + Decimal("1.65")) == "9.8767"
        assert by_id(body)[E]["generations"]["completed"] == 1
        assert D not in by_id(body)

        # An explicit hourly bucket over a day; series sums to the fleet cost.
        body = await analytics(api, since=t("00:00", "2024-03-14"), until=t("00:00"), bucket="hour")
        assert len(body["series"]) == 24 and body["fleet"]["cost"] == "0.65"


async def test_server_analytics_refusals(tmp_path):
    async with running_daemon(tmp_path / "state") as d, d.session() as api:
        await seed(d.app[keys.DB])
        for params, status, code in [
            ({"serverId": "999"}, 404, "SERVER_NOT_FOUND"),
            ({"since": t("06:00"), "until": t("01:00")}, 400, "VALIDATION_ERROR"),
            ({"since": "yesterday"}, 400, "VALIDATION_ERROR"),
            ({"bucket": "week"}, 400, "VALIDATION_ERROR"),
            ({"serverID": "1"}, 400, "VALIDATION_ERROR"),
            ({"since": "2000-01-01T00:00:00Z", "until": "2024-01-01T00:00:00Z", "bucket": "hour"}, 400,
             "VALIDATION_ERROR"),
        ]:
            async with api.get("/api/server-analytics", params=params) as r:
                assert r.status == status, (params, await r.text())
                assert (await r.json())["code"] == code
        async with d.session(None) as anon, anon.get("/api/server-analytics") as r:
            assert r.status == 401
        async with d.session(None) as anon, anon.get("/api/stats") as r:
            assert r.status == 401


async def test_dashboard_stats_exact(tmp_path):
    async with running_daemon(tmp_path / "state") as d, d.session() as api:
        await seed(d.app[keys.DB])
        now = datetime(2024, 3, 15, 6, 0, tzinfo=UTC)
        d.app[keys.ANALYTICS].clock = lambda: to_ms(now) / 1000
        d.app[keys.SETTINGS].costs.daily_cap = Decimal("50")
        async with api.get("/api/stats") as r:
            assert r.status == 200, await r.text()
            stats = await r.json()
        assert stats["asOf"].startswith("2024-03-15T06:00:00")
        servers = stats["servers"]
        assert servers["total"] == 3 and servers["ready"] == 2  # B stopped, C and F running + ready
        assert servers["byStatus"] == {"launching": 0, "loading": 0, "running": 2, "stopped": 1, "error": 0,
                                       "offline": 0}
        assert servers["bySetupStatus"] == {"pending": 1, "installing": 0, "ready": 2, "failed": 0}
        assert stats["generations"] == {"queued": 1, "processing": 1, "completedToday": 7, "failedLastHour": 1}
        spend = stats["spend"]
        assert spend["today"] == money(FLEET_COST) == "8.2267"
        month = FLEET_COST + Decimal("1.65")  # + E on the 10th + B on the evening of the 14th
        assert spend["thisMonth"] == money(month) == "9.8767"
        assert spend["burnRate"] == "0.85"  # F running 0.80 + B's disk 0.05
        hours_left = 16 * 24 + 18  # to 2024-04-01T00:00
        assert spend["projectedMonth"] == money(month + Decimal("0.85") * hours_left) == "351.5767"
        assert spend["dailyCap"] == "50.00" and spend["monthlyCap"] is None
        assert stats["vastCredit"] is None  # no Vast key

        # 03-10 at noon: only E had run this month, all of it that day.
        d.app[keys.ANALYTICS].clock = lambda: to_ms(datetime(2024, 3, 10, 12, 0, tzinfo=UTC)) / 1000
        async with api.get("/api/stats") as r:
            spend = (await r.json())["spend"]
        assert spend["today"] == "1.00" and spend["thisMonth"] == "1.00"


async def test_single_generation_percentiles_and_empty_server(tmp_path):
    async with running_daemon(tmp_path / "state") as d, d.session() as api:
        db = d.app[keys.DB]
        await db.execute(
            "INSERT INTO servers (id, kind, name, price_per_hour, disk_cost_per_hour, status, setup_status, "
            "created_at, updated_at) VALUES (7, 'vast', 'solo', '0.3333', NULL, 'running', 'ready', ?, ?)",
            (t("00:00"), t("00:00")))
        await db.execute("INSERT INTO server_status_history (server_id, at, status, setup_status) "
                         "VALUES (7, ?, 'running', 'ready')", (t("00:00"),))
        await db.execute("INSERT INTO generations (server_id, prompt, status, created_at, completed_at, duration_ms) "
                         "VALUES (7, 'p', 'completed', ?, ?, 4321)", (t("00:05"), t("00:06")))
        body = await analytics(api, since=t("00:00"), until=t("03:00"))
        s = body["servers"][0]
        assert s["generations"]["durationP50Ms"] == s["generations"]["durationP95Ms"] == 4321
        assert s["cost"] == "0.9999" and s["costPerGeneration"] == "0.9999" and s["storageCost"] == "0.00"


async def test_rollups_follow_every_change_and_agree_with_the_rows(tmp_path):
    """The per-day and per-hour counters (kept by triggers) against a recount, after
    status changes, a server reassignment, images added and removed, deletions; and a
    day-aligned window (counters) against one a millisecond wider (rows at the edges)."""
    async with running_daemon(tmp_path / "state") as d, d.session() as api:
        db = d.app[keys.DB]
        await seed(db)
        await db.execute("UPDATE generations SET status = 'completed', completed_at = ?, duration_ms = 777 "
                         "WHERE status = 'queued'", (t("05:40"),))
        await db.execute("UPDATE generations SET server_id = ? WHERE status = 'processing'", (B,))
        await db.execute("UPDATE generations SET status = 'failed' WHERE status = 'processing'")
        await db.execute("UPDATE generations SET progress = 50 WHERE id = 1")  # not a counted column
        gid = await db.execute("INSERT INTO generations (prompt, status, created_at) VALUES ('p', 'queued', ?)",
                               (t("04:59"),))
        await db.execute("UPDATE generations SET server_id = ?, status = 'completed', duration_ms = 5 WHERE id = ?",
                         (C, gid))
        await db.execute("INSERT INTO generation_images (generation_id, filename, path, content_type, size, sha256, "
                         "created_at) VALUES (?, 'n.png', '/n.png', 'image/png', 1, 'x', ?)", (gid, t("05:00")))
        await db.execute("DELETE FROM generation_images WHERE id = (SELECT min(id) FROM generation_images)")
        await db.execute("DELETE FROM generations WHERE id = 2")  # two images go with it (cascade)
        await db.execute("INSERT INTO generations (prompt, status, created_at) VALUES ('p', 'queued', ?)",
                         (t("05:55"),))  # never assigned: fleet figures only

        daily = {(r[0], r[1], r[2]): (r[3], r[4]) for r in await db.fetchall(
            "SELECT day, server_id, status, n, images FROM generation_daily WHERE n != 0 OR images != 0")}
        recount = {(r[0], r[1], r[2]): (r[3], r[4]) for r in await db.fetchall(
            "SELECT substr(g.created_at, 1, 10), coalesce(g.server_id, 0), g.status, count(*), "
            "coalesce(sum((SELECT count(*) FROM generation_images i WHERE i.generation_id = g.id)), 0) "
            "FROM generations g GROUP BY 1, 2, 3")}
        assert daily == recount and daily[(DAY, 0, "queued")] == (1, 0) and daily[(DAY, C, "completed")] == (1, 1)
        hourly = {(r[0], r[1]): r[2] for r in await db.fetchall(
            "SELECT hour, status, n FROM generation_hourly WHERE n != 0")}
        assert hourly == {(r[0], r[1]): r[2] for r in await db.fetchall(
            "SELECT substr(created_at, 1, 13), status, count(*) FROM generations GROUP BY 1, 2")}

        aligned = await analytics(api, since="2024-03-10T00:00:00.000Z", until="2024-03-16T00:00:00.000Z",
                                  bucket="day")
        wider = await analytics(api, since="2024-03-09T23:59:59.999Z", until="2024-03-16T00:00:00.001Z",
                                bucket="day")
        assert aligned["fleet"]["generations"] == wider["fleet"]["generations"]
        assert {k: v["generations"] for k, v in by_id(aligned).items()} == \
            {k: v["generations"] for k, v in by_id(wider).items()}
        fg = aligned["fleet"]["generations"]
        # 14 seeded, one deleted, two added; the queued one completed, the processing one failed
        assert (fg["total"], fg["completed"], fg["failed"], fg["queued"], fg["processing"]) == (15, 10, 3, 1, 0)
        assert fg["images"] == 16 - 1 - 2 + 1  # seeded 16, one removed, two cascaded, one added
        assert sum(p["generations"] for p in aligned["series"]) == 15
        assert by_id(aligned)[B]["generations"]["failed"] == 2  # F's generation moved to B, then failed


async def test_percentiles_from_a_sample_past_the_limit(tmp_path, monkeypatch):
    from socialsync.daemon.services import analytics as module

    monkeypatch.setattr(module, "PERCENTILE_EXACT_LIMIT", 3)
    async with running_daemon(tmp_path / "state") as d, d.session() as api:
        await seed(d.app[keys.DB])
        body = await analytics(api, since=t("00:00"), until=t("06:00"))
        # 7 completed → every 3rd id: generations 3 (A, 3000 ms) and 9 (B, 1500 ms)
        assert body["durationSampleEvery"] == 3
        servers = by_id(body)
        assert servers[A]["generations"]["durationP50Ms"] == servers[A]["generations"]["durationP95Ms"] == 3000
        assert servers[B]["generations"]["durationP50Ms"] == 1500
        fleet = body["fleet"]["generations"]
        assert (fleet["durationP50Ms"], fleet["durationP95Ms"], fleet["completed"]) == (1500, 3000, 7)
