"""Snapshots of the console's main screens (pytest-textual-snapshot), from a fake daemon
that answers with fixed wire JSON, on a fixed clock. Update them on purpose with
``pytest tests/test_tui_snapshots.py --snapshot-update`` and look at the report."""

from __future__ import annotations

from tui_helpers import FakeDaemon, fixed_clock, until

from socialsync.tui.app import SocialSyncApp
from socialsync.tui.screens.generations import GenerationsScreen
from socialsync.tui.screens.launch import LaunchScreen
from socialsync.tui.screens.server_detail import ServerDetailScreen
from socialsync.tui.widgets.fleet_table import FleetTable


def make_app() -> SocialSyncApp:
    return SocialSyncApp(FakeDaemon(), clock=fixed_clock, time_ticks=False)  # type: ignore[arg-type]


async def fleet_ready(pilot) -> None:
    app = pilot.app
    await until(pilot, lambda: app.live.synced and app.stats is not None and app.role == "admin")
    table = app.screen.query_one(FleetTable)
    await until(pilot, lambda: table.row_count == 6 and any(u for u in app.live.usage.values()))
    await until(pilot, lambda: str(table.get_cell("1", "cost")) != "—")
    await pilot.pause(0.3)


def test_fleet(snap_compare):
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=fleet_ready)


def test_fleet_wide(snap_compare):
    assert snap_compare(make_app(), terminal_size=(200, 50), run_before=fleet_ready)


def test_generations(snap_compare):
    async def run_before(pilot) -> None:
        await fleet_ready(pilot)
        await pilot.press("2")
        screen = await until(pilot, lambda: isinstance(pilot.app.screen, GenerationsScreen) and pilot.app.screen)
        await until(pilot, lambda: len(screen.query("GenerationRow")) == 3)
        await until(pilot, lambda: screen.query_one("#recent").row_count == 10)
        await pilot.pause(0.3)

    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=run_before)


def test_launch(snap_compare):
    async def run_before(pilot) -> None:
        await fleet_ready(pilot)
        await pilot.press("l")
        screen = await until(pilot, lambda: isinstance(pilot.app.screen, LaunchScreen) and pilot.app.screen)
        await until(pilot, lambda: screen.query_one("#offers").row_count == 6)
        await pilot.pause(0.3)

    assert snap_compare(make_app(), terminal_size=(100, 30), run_before=run_before)


def test_server_detail(snap_compare):
    async def run_before(pilot) -> None:
        await fleet_ready(pilot)
        await pilot.press("enter")
        screen = await until(pilot, lambda: isinstance(pilot.app.screen, ServerDetailScreen) and pilot.app.screen)
        await until(pilot, lambda: screen.query_one("#history").row_count == 4
                    and screen.query_one("#downloads").row_count == 1 and screen.query_one("#models").row_count == 3)
        await pilot.pause(0.3)

    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=run_before)
