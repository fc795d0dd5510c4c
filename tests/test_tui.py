"""The console driven by Pilot: against real daemons on loopback (demo simulators behind
them) for the operator's journeys and a daemon restart, and against a fake daemon that
answers with fixed wire JSON where the test is about the console's own behaviour
(coalescing, filter and sort, the palette)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import aiohttp
import pytest
from harness import running_daemon
from textual.widgets import DataTable, Footer, TabbedContent
from tui_helpers import (
    ACTIVE_GENERATIONS,
    NOW_TS,
    DaemonProcess,
    FakeDaemon,
    cell_text,
    fixed_clock,
    screen_lines,
    server_json,
    text_of,
    until,
)

from socialsync.common.client import Disconnected
from socialsync.common.errors import ApiError
from socialsync.tui.app import SocialSyncApp
from socialsync.tui.commands import SocialSyncCommands
from socialsync.tui.screens import server_detail
from socialsync.tui.screens.dialogs import ConfirmDialog
from socialsync.tui.screens.fleet import FleetScreen
from socialsync.tui.screens.generate import GenerateScreen
from socialsync.tui.screens.generation_detail import GenerationDetailScreen
from socialsync.tui.screens.generations import GenerationsScreen
from socialsync.tui.screens.launch import LaunchScreen, RentDialog
from socialsync.tui.screens.logs import LogsScreen
from socialsync.tui.screens.server_detail import ServerDetailScreen
from socialsync.tui.state import Changed
from socialsync.tui.widgets.connection_banner import ConnectionBanner
from socialsync.tui.widgets.fleet_table import FleetTable
from socialsync.tui.widgets.generation_row import GenerationRow
from socialsync.tui.zmq_transport import daemon_client

FAST_SIM = {"boot_seconds": 0.3, "step_time": 0.02}
FAST_COMFY = {"probe_interval": 0.05, "probe_interval_max": 0.2}


def fake_app(daemon: FakeDaemon, **kw) -> SocialSyncApp:
    return SocialSyncApp(daemon, clock=kw.pop("clock", fixed_clock), time_ticks=False, **kw)  # type: ignore[arg-type]


def banner(app: SocialSyncApp) -> ConnectionBanner:
    return app.screen.query_one(ConnectionBanner)


def drawn_row(table: DataTable, sid: int) -> str:
    """The text the table draws for a row (the header is the first line)."""
    return table.render_line(1 + table.get_row_index(str(sid)) - int(table.scroll_y)).text


def shows(table: FleetTable, sid: int, server: dict) -> bool:
    if server["status"] == "destroyed":
        return str(sid) not in table.rows
    return str(sid) in table.rows and cell_text(table, str(sid), "status") == (
        f"{server['status']}/{server['setupStatus']}")


# -- against a real daemon ------------------------------------------------------------------


@pytest.fixture
def short_dir():
    """A runtime directory whose ipc:// path fits the kernel's limit."""
    path = Path(tempfile.mkdtemp(prefix="ss-tui-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_launch_ready_generate_open_image_destroy(tmp_path, short_dir):
    """The operator's day: rent an offer, watch it become ready, generate and watch the bar
    reach 100, open the image entry, destroy the server after the confirm dialog."""
    async with running_daemon(tmp_path / "state", demo=True, sim=FAST_SIM, comfy=FAST_COMFY,
                              runtime_dir=short_dir) as d, daemon_client(d.base_url, d.admin_key) as client:
        app = SocialSyncApp(client, transport="auto")
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.connection.live, what="connected")
            assert app.connection.transport == "zmq"  # the daemon is on this machine
            assert app.role == "admin"

            # Launch: the offers, the dialog with the price per hour and per day, rent.
            await pilot.press("l")
            launch = await until(pilot, lambda: isinstance(app.screen, LaunchScreen) and app.screen)
            offers = launch.query_one("#offers")
            await until(pilot, lambda: offers.row_count > 0, what="offers listed")
            cheapest = launch.selected_offer()
            assert cheapest is not None and cheapest["pricePerHour"]
            await pilot.press("enter")  # the table has the focus: rent the highlighted offer
            dialog = await until(pilot, lambda: isinstance(app.screen, RentDialog) and app.screen)
            text = " ".join(text_of(s) for s in dialog.query("Static"))
            assert f"/h = ${float(cheapest['pricePerDay']):.2f}/day" in text
            await pilot.click("#rent")

            # Back on the fleet: the new row, selected, goes ready by itself.
            table = await until(pilot, lambda: isinstance(app.screen, app.MODES["fleet"]) and app.screen.table)
            await until(pilot, lambda: table.row_count == 1, what="the server's row")
            sid = int(next(iter(table.rows)).value)
            await until(pilot, lambda: cell_text(table, str(sid), "status") == "running/ready", timeout=20,
                        what="server ready")
            assert table.selected_id() == sid
            await until(pilot, lambda: cell_text(table, str(sid), "gpu") != "—", what="filled in from Vast")

            # Generate on it, from the fleet: the progress bar goes to 100.
            await pilot.press("g")
            form = await until(pilot, lambda: isinstance(app.screen, GenerateScreen) and app.screen)
            assert form.query_one("#g-server").value == sid
            form.query_one("#g-prompt").value = "a lighthouse at dusk"
            form.query_one("#g-steps").value = "80"  # 1.6 s of steps: long enough to see the bar move
            await pilot.click("#g-submit")
            gens = await until(pilot, lambda: isinstance(app.screen, GenerationsScreen) and app.screen)
            row = await until(pilot, lambda: next(iter(gens.query(GenerationRow)), None), what="a running row")
            seen = set()
            await until(pilot, lambda: seen.add(row.progress) or row.progress == 100, timeout=20, what="100 %")
            assert len(seen) > 1  # it moved, not just jumped to done
            gid = row.generation_id
            recent = gens.query_one("#recent")
            await until(pilot, lambda: str(gid) in recent.rows, what="in the finished table")
            assert cell_text(recent, str(gid), "status") == "completed"

            # Open its entry: parameters and the image's URL at the daemon.
            recent.focus()
            recent.move_cursor(row=recent.get_row_index(str(gid)))
            await pilot.press("enter")
            detail = await until(pilot, lambda: isinstance(app.screen, GenerationDetailScreen) and app.screen)
            images = detail.query_one("#images")
            await until(pilot, lambda: images.row_count == 1, what="the image entry")
            url = str(images.get_cell_at((0, 1)))
            assert url.startswith(d.base_url + "/api/images/") and url.endswith(".png")
            assert "steps=80" in text_of(detail.query_one("#generation-fields"))
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {d.admin_key}"}) as s, \
                    s.get(url) as r:
                assert r.status == 200 and r.content_type == "image/png"

            # Destroy, after a dialog that names the server and its cost.
            await pilot.press("escape")
            await pilot.press("1")
            await until(pilot, lambda: app.current_mode == "fleet" and app.screen.table.selected_id() == sid)
            await pilot.press("d")
            confirm = await until(pilot, lambda: isinstance(app.screen, ConfirmDialog) and app.screen)
            body = confirm.body
            name = app.live.servers[sid].name
            assert name in body and "so far at $" in body
            await pilot.click("#confirm")
            await until(pilot, lambda: table.row_count == 0, timeout=10, what="row removed")
            assert sid not in app.live.servers
            assert not app.errors


@pytest.mark.parametrize("transport", ["zmq", "ws"])
async def test_daemon_restart_mid_session(tmp_path, transport):
    """Kill the daemon under a running console: a banner says so and that what is shown
    is stale; start it again on the same port and state: the banner goes, the stream
    resumes, and the table shows what the daemon says now. Over ZeroMQ (the heartbeat
    stops) and over the websocket (the connection drops)."""
    daemon = DaemonProcess(tmp_path / "state")
    try:
        daemon.start()
        await daemon.wait_ready()
        headers = {"Authorization": f"Bearer {daemon.admin_key}"}
        async with aiohttp.ClientSession(daemon.base_url, headers=headers) as api:
            offers = await (await api.get("/api/vast-offers", params={"order": "price"})).json()
            async with api.post("/api/vast-servers", json={"offerId": offers[0]["offerId"]}) as r:
                sid = (await r.json())["id"]
        async with daemon_client(daemon.base_url, daemon.admin_key) as client:
            app = SocialSyncApp(client, transport=transport)
            async with app.run_test(size=(100, 30)) as pilot:
                await until(pilot, lambda: app.connection.live)
                assert app.connection.transport == transport
                table = app.screen.query_one(FleetTable)
                await until(pilot, lambda: str(sid) in table.rows and
                            cell_text(table, str(sid), "status") == "running/ready", timeout=20, what="ready")
                assert not banner(app).display

                daemon.kill()
                await until(pilot, lambda: app.connection.state == "down", timeout=15, what="seen down")
                await pilot.pause(0.3)
                text = text_of(banner(app))
                assert banner(app).display and "unreachable" in text and "as of" in text
                assert table.has_class("-stale") and "STALE" in str(table.border_subtitle)

                # While it is down, the instance is destroyed at "Vast" (the demo's Vast
                # dies with the daemon): the restarted daemon reconciles, and the
                # console must show that, not the row it had.
                daemon.start()
                await daemon.wait_ready()
                await until(pilot, lambda: app.connection.live, timeout=30, what="reconnected")
                assert app.connection.transport == transport
                assert not banner(app).display and not table.has_class("-stale")
                # The table agrees with what the daemon answers now (it reconciles the
                # instance the demo's Vast lost when it died).
                for _ in range(100):
                    fresh = await client.request("GET", f"/api/vast-servers/{sid}")
                    if shows(table, sid, fresh):
                        break
                    await pilot.pause(0.2)
                else:
                    raise AssertionError(f"table never showed {fresh['status']}/{fresh['setupStatus']}")
                assert app.live.seq is not None and app.connection.last_seq is not None
    finally:
        daemon.stop()


async def test_viewer_sees_screens_with_actions_disabled_and_errors_in_place(tmp_path):
    async with running_daemon(tmp_path / "state", comfy={"ready_deadline": 0.5, "probe_interval": 0.05}) as d:
        async with d.session() as api:
            async with api.post("/api/api-keys", json={"name": "watcher", "role": "viewer"}) as r:
                viewer_key = (await r.json())["key"]
            async with api.post("/api/vast-servers/attach",
                                json={"name": "home-box", "comfyUrl": "http://127.0.0.1:9"}) as r:
                sid = (await r.json())["id"]

        # The viewer: every screen, every action disabled with the reason.
        async with daemon_client(d.base_url, viewer_key) as client:
            app = SocialSyncApp(client, transport="ws")
            async with app.run_test(size=(100, 30)) as pilot:
                await until(pilot, lambda: app.role == "viewer" and str(sid) in app.screen.table.rows)
                notice = app.screen.query_one("RoleNotice")
                assert notice.display and "viewer role" in text_of(notice)
                assert app.screen.check_action("destroy", ()) is None  # shown, disabled
                await pilot.press("d")
                assert not isinstance(app.screen, ConfirmDialog)
                await pilot.press("enter")
                detail = await until(pilot, lambda: isinstance(app.screen, ServerDetailScreen) and app.screen)
                await until(pilot, lambda: detail.server is not None)
                assert all(b.disabled for b in detail.query("#server-actions Button"))
                assert "viewer role" in text_of(detail.query_one("#server-actions-why"))
                await pilot.press("escape", "l")
                launch = await until(pilot, lambda: isinstance(app.screen, LaunchScreen) and app.screen)
                assert launch.check_action("rent", ()) is None
                await pilot.press("escape", "g")
                form = await until(pilot, lambda: isinstance(app.screen, GenerateScreen) and app.screen)
                assert form.query_one("#g-submit").disabled
                assert "viewer role" in text_of(form.query_one("#g-error"))

        # An operator's refused request: the daemon's message and code, in place.
        async with daemon_client(d.base_url, d.admin_key) as client:
            app = SocialSyncApp(client, transport="ws")
            async with app.run_test(size=(100, 30)) as pilot:
                await until(pilot, lambda: str(sid) in app.screen.table.rows)
                await pilot.press("g")
                form = await until(pilot, lambda: isinstance(app.screen, GenerateScreen) and app.screen)
                form.query_one("#g-prompt").value = "a cat"
                await pilot.click("#g-submit")
                error = form.query_one("#g-error")
                await until(pilot, lambda: "[SERVER_NOT_READY]" in text_of(error), what="error in place")
                assert isinstance(app.screen, GenerateScreen)  # still there, nothing crashed
                form.query_one("#g-width").value = "100"
                await pilot.click("#g-submit")
                await until(pilot, lambda: "[VALIDATION_ERROR]" in text_of(error))
                assert "multiple of 8" in text_of(error)


# -- the console's own behaviour, against a fake daemon -----------------------------------


async def test_progress_bursts_are_coalesced():
    """100 progress updates of one generation and 200 status changes within a flush
    interval reach the screens as one change each, with the last values."""
    daemon = FakeDaemon()
    app = fake_app(daemon)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.live.synced)
        await pilot.press("2")
        gens = await until(pilot, lambda: isinstance(app.screen, GenerationsScreen) and app.screen)
        await until(pilot, lambda: gens.query("#gen-41"))
        await pilot.pause(0.3)
        handled: list[Changed] = []
        original = gens.on_live_changed
        gens.on_live_changed = lambda m: (handled.append(m), original(m))  # type: ignore[method-assign]
        for p in range(1, 101):
            daemon.push("generation_progress", {"generationId": 41, "progress": p, "status": "processing",
                                                "serverId": 1, "step": p // 5, "steps": 20})
        for i in range(200):
            daemon.push("server_status", {"serverId": 2, "status": ("running", "stopped")[i % 2],
                                          "setupStatus": "ready"})
        await until(pilot, lambda: app.live.events_applied == 300)
        await pilot.pause(app.live.flush_interval * 3)
        assert 1 <= len(handled) <= 3, len(handled)
        row = gens.query_one("#gen-41", GenerationRow)
        assert row.progress == 100


async def test_fleet_filter_sort_and_updates_in_place():
    daemon = FakeDaemon()
    app = fake_app(daemon)
    async with app.run_test(size=(120, 30)) as pilot:
        table = await until(pilot, lambda: app.screen.query_one(FleetTable))
        await until(pilot, lambda: table.row_count == 6)
        assert cell_text(table, "2", "status") == "running/installing"
        # Uptime and cost come with the dashboard, fetched once the first screen is drawn.
        await until(pilot, lambda: cell_text(table, "1", "cost") != "—")
        assert cell_text(table, "1", "uptime") == "3h01m" and cell_text(table, "1", "cost") == "$1.05"

        # An event changes one cell, in place, and the terminal shows it (the row's cached
        # rendering is dropped, the others' are kept).
        assert "running/installing" in drawn_row(table, 2)
        updates = table.cell_updates
        daemon.push("server_status", {"serverId": 2, "status": "running", "setupStatus": "ready"})
        await until(pilot, lambda: cell_text(table, "2", "status") == "running/ready")
        assert table.cell_updates - updates == 1 and table.row_count == 6
        assert "running/ready" in drawn_row(table, 2) and "gpu-0003" in drawn_row(table, 3)

        # Filter with /, sort with s.
        await pilot.press("slash", *"4090")
        await until(pilot, lambda: table.row_count == 2)
        assert {k.value for k in table.rows} == {"1", "6"}
        await pilot.press("enter", "escape")
        await until(pilot, lambda: table.row_count == 6)
        await pilot.press("s")  # name
        await pilot.press("s")  # status
        assert table.sort_column == "status"
        order = [cell_text(table, table.coordinate_to_cell_key((r, 0)).row_key.value, "status").split("/")[0]
                 for r in range(table.row_count)]
        assert order[0] == "running" and order[-1] in ("error", "offline")

        # A launch seen first in an event is fetched once and added; a destroy removes it.
        daemon.routes[("GET", "/api/vast-servers/9")] = server_json(9, status="launching", setup="pending")
        daemon.push("server_status", {"serverId": 9, "status": "launching", "setupStatus": "pending"})
        await until(pilot, lambda: "9" in table.rows)
        daemon.push("server_status", {"serverId": 9, "status": "destroyed", "setupStatus": "pending"})
        await until(pilot, lambda: "9" not in table.rows)


async def test_disconnect_banner_and_palette_commands():
    daemon = FakeDaemon()
    app = fake_app(daemon)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.connection.live and app.stats is not None)  # the dashboard follows the first screen
        daemon.disconnect("connection refused")
        await until(pilot, lambda: banner(app).display)
        assert "unreachable" in text_of(banner(app))
        assert "as of 12:00:00 UTC" in text_of(banner(app))
        assert "(as of 12:00:00)" in text_of(app.screen.query_one("#stats"))

        # Every action is in the palette; choosing one runs it.
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        await pilot.press(*"Launch a")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, LaunchScreen))
        provider = SocialSyncCommands(app.screen)
        titles = {t for t, _, _ in provider.commands()}
        assert {"Back", "Search", "Sort", "Rent", "Fleet", "Generations", "Logs", "Quit", "Reconnect now"} <= titles
        assert any(t.startswith("Open gpu-0001") for t in titles)


async def test_logs_tail_events_and_audit_filtered_by_server():
    daemon = FakeDaemon()
    app = fake_app(daemon)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.live.synced)
        await pilot.press("3")
        logs = await until(pilot, lambda: isinstance(app.screen, LogsScreen) and app.screen)
        await until(pilot, lambda: logs.log_widget.shown >= 2, what="audit history")
        daemon.push("server_status", {"serverId": 3, "status": "error", "setupStatus": "failed", "reason": "OOM"})
        daemon.push("server_status", {"serverId": 4, "status": "running", "setupStatus": "ready"})
        await until(pilot, lambda: logs.log_widget.shown >= 4)
        text = "\n".join(str(line.text) for line in logs.log_widget.lines)
        assert "server #3 error/failed — OOM" in text and "server.launch server #1" in text
        await pilot.press("slash", *"#3", "enter")
        await until(pilot, lambda: logs.log_widget.shown == 1)
        assert "server #3" in "".join(str(line.text) for line in logs.log_widget.lines)


async def test_daemon_errors_never_crash():
    daemon = FakeDaemon(extra={
        ("DELETE", "/api/vast-servers/1"): ApiError(503, "VAST_UNAVAILABLE", "Vast is unreachable",
                                                    "connect timeout"),
        ("GET", "/api/vast-offers"): ApiError(429, "RATE_LIMIT_EXCEEDED", "Too many requests", "retry in 12 s"),
    })
    app = fake_app(daemon)
    async with app.run_test(size=(100, 30)) as pilot:
        table = await until(pilot, lambda: app.screen.query_one(FleetTable))
        await until(pilot, lambda: table.row_count == 6)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.click("#confirm")
        await until(pilot, lambda: app.errors, what="the error reported")
        assert app.errors[-1] == "Vast is unreachable [VAST_UNAVAILABLE]: connect timeout"
        assert "1" in table.rows
        await pilot.press("l")
        launch = await until(pilot, lambda: isinstance(app.screen, LaunchScreen) and app.screen)
        status = launch.query_one("#offer-status")
        await until(pilot, lambda: "[RATE_LIMIT_EXCEEDED]" in text_of(status))
        assert app.is_running


def download_event(did: int, status: str, *, name: str = "SDXL Turbo, fp16", folder: str = "checkpoints",
                   filename: str = "sd_xl_turbo_1.0_fp16.safetensors", error: str | None = None, done: int = 0) -> dict:
    """A ``model_download`` event's data, as the daemon sends it."""
    return {"downloadId": did, "serverId": 1, "name": name, "folder": folder, "filename": filename,
            "status": status, "bytesDone": done, "bytesTotal": 6_900_000_000, "rate": None, "error": error}


async def test_server_downloads_grow_in_place_and_tabs_switch_by_key():
    """A download's status or error that grows is drawn whole (its column widens), and the
    line above the table follows the highlighted download as events change it. The tabs
    switch with [ and ], and are in the palette."""
    daemon = FakeDaemon()
    app = fake_app(daemon)
    async with app.run_test(size=(200, 50)) as pilot:
        await until(pilot, lambda: app.live.synced)
        app.call_later(app.open_server, 1)
        detail = await until(pilot, lambda: isinstance(app.screen, ServerDetailScreen) and app.screen)
        downloads = detail.query_one("#downloads", DataTable)
        await until(pilot, lambda: downloads.row_count == 1, what="the download listed")
        tabs = detail.query_one(TabbedContent)
        assert tabs.active == "tab-overview"
        await pilot.press("right_square_bracket", "right_square_bracket", "right_square_bracket")
        assert tabs.active == "tab-downloads"
        await pilot.press("right_square_bracket")
        assert tabs.active == "tab-overview"
        await pilot.press("left_square_bracket")
        assert tabs.active == "tab-downloads"
        assert "running" in drawn_row(downloads, 2)

        # "running" -> "completed": wider than anything the column had.
        daemon.push("model_download", download_event(2, "completed", done=6_900_000_000))
        await until(pilot, lambda: cell_text(downloads, "2", "status") == "completed")
        await until(pilot, lambda: "completed" in drawn_row(downloads, 2), what="drawn whole")
        status_line = detail.query_one("#downloads-status")
        assert ": completed" in text_of(status_line)

        # A new one goes on top, under the cursor: the line above says what it is doing,
        # and its error, longer than the column's every value so far, is drawn whole.
        lora = "detail_tweaker_xl.safetensors"
        daemon.push("model_download", download_event(3, "queued", name="Detail tweaker", folder="loras", filename=lora))
        await until(pilot, lambda: downloads.row_count == 2)
        await until(pilot, lambda: f"#3 loras/{lora}: queued" in text_of(status_line), what="the new row's story")
        error = "sha256 mismatch: expected 1f0c93ab, got 9ab27c01 (file removed)"
        daemon.push("model_download", download_event(3, "failed", name="Detail tweaker", folder="loras", filename=lora,
                                                      error=error))
        await until(pilot, lambda: cell_text(downloads, "3", "status") == "failed")
        # Its column widened to the whole error (what is past the pane's edge scrolls into view).
        assert cell_text(downloads, "3", "error") == error
        await until(pilot, lambda: downloads.columns["error"].content_width >= len(error), what="the column widened")
        assert f"#3 loras/{lora}: failed — {error}" in text_of(status_line)

        # The tabs are in the palette, by name.
        commands = {t: run for t, run, _ in SocialSyncCommands(detail).commands()}
        assert {"Next tab", "Previous tab", "Show the History tab", "Show the Models tab"} <= set(commands)
        app.call_later(commands["Show the History tab"])  # as the palette runs it
        await until(pilot, lambda: tabs.active == "tab-history")


async def test_server_uptime_and_cost_tick(monkeypatch):
    """The uptime and cost of a server's screen move with the clock, with no request."""
    monkeypatch.setattr(server_detail, "TIME_TICK", 0.1)
    now = [NOW_TS]
    daemon = FakeDaemon()
    app = SocialSyncApp(daemon, clock=lambda: now[0])  # type: ignore[arg-type]
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.live.synced and app.live.usage_now(1) is not None, what="usage figures")
        app.call_later(app.open_server, 1)
        detail = await until(pilot, lambda: isinstance(app.screen, ServerDetailScreen) and app.screen)
        fields = detail.query_one("#server-fields")
        await until(pilot, lambda: "3h01m running / $1.05 so far" in text_of(fields))
        asked = len(daemon.requests)
        now[0] += 3600
        await until(pilot, lambda: "4h01m running / $1.40 so far" in text_of(fields), what="the uptime ticked")
        assert len(daemon.requests) == asked


async def test_banner_names_a_timeout_and_does_not_claim_now():
    """A request to a daemon that hangs times out with no message: the banner says it
    was not answered, and once the wait is over it says a try is under way, not "now"."""
    daemon = FakeDaemon()
    app = fake_app(daemon)
    async with app.run_test(size=(120, 30)) as pilot:
        await until(pilot, lambda: app.connection.live)
        daemon.queue.put_nowait(Disconnected("GET http://127.0.0.1:8420/api/events/info: ", None, 0.0, 2))
        await until(pilot, lambda: banner(app).display)
        text = text_of(banner(app))
        assert "unreachable since 12:00:00 (no answer, timed out); retrying (attempt 2) …" in text
        assert "now" not in text and "()" not in text
        daemon.queue.put_nowait(Disconnected("connection refused", None, 4.0, 3))
        await until(pilot, lambda: "attempt 3" in text_of(banner(app)))
        assert "(connection refused); retrying in 4 s (attempt 3)." in text_of(banner(app))


SCREENS_80 = ("fleet", "server", "generations", "generation", "logs", "launch", "generate")
SCREEN_CLASSES = {"fleet": FleetScreen, "server": ServerDetailScreen, "generations": GenerationsScreen,
                  "generation": GenerationDetailScreen, "logs": LogsScreen, "launch": LaunchScreen,
                  "generate": GenerateScreen}
PALETTE_80 = {"server": {"Stop/Start", "Reboot", "Destroy", "Generate", "Get model", "Next tab", "Previous tab"},
              "generation": {"Copy URL", "Save", "Cancel"}}


async def test_every_footer_fits_80_columns():
    """At 80x24 every screen's footer is whole: no key is cut or hidden under the palette
    key, and "? Keys" and "q Quit" are there wherever the screen lets them work."""
    daemon = FakeDaemon()
    app = fake_app(daemon)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.live.synced and app.role == "admin")
        seen = []
        for name in SCREENS_80:
            if name == "server":
                app.call_later(app.open_server, 1)
            elif name == "generation":
                app.call_later(app.open_generation, 40)
            elif name == "launch":
                await pilot.press("l")
            elif name == "generate":
                app.call_later(app.action_generate, 1)
            else:
                app.call_later(app.switch_mode, {"fleet": "fleet", "generations": "generations", "logs": "logs"}[name])
            # Wait for the screen and its footer to be drawn (a loaded machine takes a while).
            await until(pilot, lambda name=name: isinstance(app.screen, SCREEN_CLASSES[name])
                        and screen_lines(app)[-1].rstrip().endswith("^p palette"), what=f"{name} drawn")
            await pilot.pause(0.1)
            footer = app.screen.query_one(Footer)
            keys = list(footer.query("FooterKey"))
            palette = next(k for k in keys if k.has_class("-command-palette"))
            line = screen_lines(app)[-1]
            assert len(line) == 80
            for key in keys:
                if key is not palette:
                    assert key.region.right <= palette.region.x, f"{name}: {key.description!r} cut at 80 columns"
                    assert f"{key.key_display} {key.description}" in line, f"{name}: {line!r}"
            if name != "generate":  # its form's inputs take the printable keys
                assert "? Keys" in line and "q Quit" in line, f"{name}: {line!r}"
            assert line.rstrip().endswith("^p palette"), f"{name}: {line!r}"
            # What the footer leaves out is still in the palette.
            titles = {t for t, _, _ in SocialSyncCommands(app.screen).commands()}
            assert PALETTE_80.get(name, set()) <= titles, f"{name}: {PALETTE_80[name] - titles}"
            seen.append(name)
            if name in ("server", "generation", "launch", "generate"):
                await pilot.press("escape")
                await pilot.pause(0.2)
        assert seen == list(SCREENS_80)


async def test_viewer_sees_why_cancel_is_disabled_on_a_generation():
    """A viewer key on a running generation: "x Cancel" is shown disabled, and the screen
    says why."""
    running = {**ACTIVE_GENERATIONS[0], "steps": 20, "step": 9}
    daemon = FakeDaemon(role="viewer", extra={("GET", f"/api/generations/{running['id']}"): running})
    app = fake_app(daemon)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.live.synced and app.role == "viewer")
        app.call_later(app.open_generation, running["id"])
        detail = await until(pilot, lambda: isinstance(app.screen, GenerationDetailScreen) and app.screen)
        await until(pilot, lambda: detail.generation is not None, what="the generation loaded")
        assert detail.generation["status"] == "processing" and not app.errors
        notice = detail.query_one("RoleNotice")
        assert notice.display
        assert "viewer role, so cancelling is disabled" in text_of(notice)
        assert any("viewer role" in line for line in screen_lines(app))  # on screen, not only in the tree
        footer = detail.query_one(Footer)
        cancel = await until(pilot, lambda: next((k for k in footer.query("FooterKey") if k.description == "Cancel"),
                                                 None), what="the footer drawn")
        await until(pilot, lambda: "x Cancel" in screen_lines(app)[-1], what="x Cancel in the footer")
        assert cancel.has_class("-disabled")  # shown dimmed; the notice above says why


@pytest.mark.parametrize("width", [80, 200])
async def test_running_prompt_takes_the_free_width(width):
    """A running generation's prompt fills the room its row has, and says "…" where cut."""
    prompt = ("a lighthouse on a cliff at dusk, waves crashing below, oil painting, dramatic sky, "
              "golden hour, highly detailed")  # 110 characters: whole at 200 columns, cut at 80
    gens = [{**ACTIVE_GENERATIONS[0], "prompt": prompt}]
    daemon = FakeDaemon(generations=gens)
    app = fake_app(daemon)
    async with app.run_test(size=(width, 24)) as pilot:
        await until(pilot, lambda: app.live.synced)
        await pilot.press("2")
        await until(pilot, lambda: isinstance(app.screen, GenerationsScreen) and app.screen.query(GenerationRow))
        line = await until(pilot, lambda: next((x for x in screen_lines(app) if "#41 " in x and x.rstrip().endswith("45%")),
                                               None), what="the running row drawn")
        if width == 200:
            assert f"#41 {prompt} " in line
        else:
            shown = line.split("#41 ", 1)[1].split("…", 1)[0]
            assert "…" in line and prompt.startswith(shown) and len(shown) >= 20, line
        assert "gpu-0001 · processing" in line and line.rstrip().endswith("45%")
