"""The SocialSync console: a Textual app attached to one daemon.

Live data comes from one event stream (ZeroMQ on the daemon's machine, ``/ws``
otherwise) consumed by one exclusive worker, which rebuilds the state from the
snapshot of every ``hello`` and applies each event after it; the stream client resumes
from the last ``seq`` after a drop. Everything else is an HTTP request in a worker,
made when the operator acts or when an event says something changed (the dashboard
figures, a server or generation first seen in an event) — never on a timer.

Screens: Fleet (home), Generations and Logs are modes (``1``/``2``/``3``); Launch,
Generate, a server's and a generation's details are pushed over them.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.reactive import var
from textual.worker import Worker, WorkerState

from socialsync.common.client import (
    DaemonClient,
    Disconnected,
    Hello,
    Reconnected,
    Resnapshot,
)
from socialsync.common.errors import ApiError
from socialsync.common.events import Envelope
from socialsync.common.servers import Server
from socialsync.tui.commands import SocialSyncCommands
from socialsync.tui.format import describe_error, money, price
from socialsync.tui.screens.base import VIEWER_REASON
from socialsync.tui.screens.fleet import FleetScreen
from socialsync.tui.state import Connection, GenerationLive, LiveState, audit_line

DEFAULT_URL = "http://127.0.0.1:8420"
STATS_MIN_INTERVAL = 5.0  # the dashboard is fetched again at most this often, and only after events
FINISHED_KEPT = 30.0  # seconds a finished generation stays among the active ones
REFUSED_RETRY = (2.0, 30.0)  # first and longest wait after the daemon refuses the stream
FIRST_PAINT_GRACE = 0.3  # seconds after the first snapshot before the dashboard and the history are fetched


class SocialSyncApp(App[int]):
    """The console; ``client`` is the daemon's client (tests hand it a fake or a real one)."""

    CSS_PATH = Path(__file__).parent / "styles" / "app.tcss"  # absolute: subclasses live elsewhere
    TITLE = "SocialSync"
    COMMANDS = App.COMMANDS | {SocialSyncCommands}
    # The other screens are imported when first shown: the first screen comes sooner.
    MODES = {"fleet": FleetScreen, "generations": lambda: _screens().GenerationsScreen(),
             "logs": lambda: _screens().LogsScreen()}
    DEFAULT_MODE = "fleet"

    BINDINGS = [
        Binding("1", "switch_mode('fleet')", "Fleet", id="app.fleet"),
        Binding("2", "switch_mode('generations')", "Gens", id="app.generations"),
        Binding("3", "switch_mode('logs')", "Logs", id="app.logs"),
        Binding("l", "launch", "Launch", id="app.launch"),
        Binding("question_mark", "keys", "Keys", id="app.keys"),
        Binding("ctrl+r", "reconnect", "Reconnect", id="app.reconnect", show=False),
        Binding("q", "quit", "Quit", id="app.quit"),
    ]

    connection: var[Connection] = var(Connection())
    stats: var[dict[str, Any] | None] = var(None)
    stats_error: var[str | None] = var(None)
    role: var[str | None] = var(None)

    def __init__(
        self,
        client: DaemonClient,
        *,
        transport: str = "auto",
        clock: Callable[[], float] = time.time,
        flush_interval: float = 0.25,
        time_ticks: bool = True,
        stats_interval: float = STATS_MIN_INTERVAL,
    ):
        super().__init__()
        self.client = client
        self.transport = transport
        self.clock = clock
        self.time_ticks = time_ticks
        self.stats_interval = stats_interval
        self.live = LiveState(clock, flush_interval)
        self.live.on_flush = self._after_flush
        self.errors: list[str] = []
        self.principal: dict[str, Any] | None = None
        self._epoch: str | None = None
        self._last_stats = 0.0
        self._stats_timer: Any = None
        self._fetching_servers: set[int] = set()
        self._fetching_generations: set[int] = set()
        self.pending_select: int | None = None
        #: Until the first screen is drawn: the dashboard and the history wait (they are
        #: not on it, and a big fleet's usage figures would delay it).
        self._first_paint = True

    # -- properties screens use -------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.client.base_url

    @property
    def is_fetching_role(self) -> bool:
        return any(w.group == "role" and not w.is_finished for w in self.workers)

    @property
    def read_only(self) -> bool:
        return self.role == "viewer"

    def server_name(self, sid: int | None) -> str:
        if sid is None:
            return "—"
        server = self.live.servers.get(sid)
        return server.name if server is not None else f"#{sid}"

    def image_url(self, url: str) -> str:
        return url if "://" in url else self.base_url + url

    # -- start ---------------------------------------------------------------------------

    def on_mount(self) -> None:
        self.consume_events()
        self.fetch_role()

    # -- the event stream ---------------------------------------------------------------

    @work(exclusive=True, group="events", exit_on_error=False, name="event-stream")
    async def consume_events(self) -> None:
        """Follow the daemon's events for as long as the app runs."""
        refused = 0
        while True:
            try:
                stream = self.client.events(transport=self.transport, since=self.live.seq if self._epoch else None,
                                            epoch=self._epoch)
                async with stream:
                    async for item in stream:
                        self._stream_item(item)
                        if isinstance(item, Hello):
                            refused = 0
                delay = REFUSED_RETRY[0]
                self._down("the event stream ended", delay)
            except ApiError as exc:
                delay = min(REFUSED_RETRY[1], REFUSED_RETRY[0] * 2**refused)
                refused += 1
                self.connection = Connection("refused", None, describe_error(exc), retry_in=delay,
                                             attempt=refused, as_of=self._as_of(), last_seq=self.live.seq,
                                             retry_at=time.monotonic() + delay)
            except Exception as exc:  # anything else: say so, and try again
                delay = min(REFUSED_RETRY[1], REFUSED_RETRY[0] * 2**refused)
                refused += 1
                self._down(describe_error(exc), delay)
            await asyncio.sleep(delay)

    def _as_of(self) -> float | None:
        c = self.connection
        if c.live:
            return self.clock()
        return c.as_of

    def _down(self, reason: str, retry_in: float, attempt: int = 0) -> None:
        c = self.connection
        down_since = c.down_since if c.state in ("down", "resyncing") and c.down_since else self.clock()
        self.connection = Connection("down", c.transport, reason, down_since, retry_in, attempt,
                                     self.live.seq, self._as_of(), time.monotonic() + retry_in)

    def _stream_item(self, item: Any) -> None:
        if isinstance(item, Envelope):
            self.live.apply(item)
        elif isinstance(item, Hello):
            self._epoch = item.epoch or self._epoch
            if item.snapshot is not None:
                first = not self.live.synced
                self.live.reset(item.snapshot.servers, item.snapshot.generations, item.seq)
                self.live.flush()
                if first:  # after the first screen is drawn: it does not need them
                    self.set_timer(FIRST_PAINT_GRACE, self._first_paint_done)
                else:
                    self._fetch_history()
            self.connection = Connection("live", item.transport, last_seq=item.seq)
            if self.role is None and not self.is_fetching_role:
                self.fetch_role()
        elif isinstance(item, Disconnected):
            self._down(item.reason, item.retry_in, item.attempt)
        elif isinstance(item, Reconnected):
            c = self.connection
            self.connection = Connection("resyncing", item.transport, f"down {item.downtime:.0f} s",
                                         c.down_since, 0, 0, self.live.seq, c.as_of)
        elif isinstance(item, Resnapshot):
            c = self.connection
            self.connection = Connection("resyncing", c.transport, item.reason, c.down_since, 0, 0,
                                         self.live.seq, c.as_of if c.as_of else self.clock())

    def _fetch_history(self) -> None:
        self.fetch_recent()
        self.fetch_audit()

    def _first_paint_done(self) -> None:
        self._first_paint = False
        self._fetch_history()
        if self.live.stats_wanted:
            self._stats_due()

    def action_reconnect(self) -> None:
        """Drop the stream and connect again now (resuming from the last seq)."""
        self.consume_events()

    # -- follow-ups of events (each one request, made because an event said so) --------

    def _after_flush(self) -> None:
        live = self.live
        for sid in list(live.unknown_servers - self._fetching_servers):
            self._fetching_servers.add(sid)
            self.fetch_server(sid)
        for gid in list(live.unknown_generations - self._fetching_generations):
            self._fetching_generations.add(gid)
            self.fetch_generation(gid)
        now = self.clock()
        for gid, g in list(live.generations.items()):
            if not g.active and g.finished_at is not None and now - g.finished_at > FINISHED_KEPT:
                live.forget_finished(gid)
        if live.stats_wanted:
            self._stats_due()

    def _stats_due(self) -> None:
        if self._first_paint:
            return  # asked for again by _first_paint_done
        wait = self._last_stats + self.stats_interval - time.monotonic()
        if wait <= 0:
            self.live.stats_wanted = False
            self._last_stats = time.monotonic()
            self.fetch_stats()
        elif self._stats_timer is None:
            self._stats_timer = self.set_timer(wait, self._stats_timer_fired)

    def _stats_timer_fired(self) -> None:
        self._stats_timer = None
        if self.live.stats_wanted:
            self._stats_due()

    @work(group="stats", exclusive=True, exit_on_error=False)
    async def fetch_stats(self) -> None:
        try:
            self.stats = await self.client.request("GET", "/api/stats")
            self.stats_error = None
        except Exception as exc:
            self.stats_error = describe_error(exc)
        servers = list(self.live.servers.values())
        if not servers:
            return
        oldest = min(s.created_at for s in servers).astimezone(UTC)
        since = datetime(oldest.year, oldest.month, oldest.day, tzinfo=UTC)
        try:
            analytics = await self.client.request(
                "GET", "/api/server-analytics",
                params={"since": since.strftime("%Y-%m-%dT%H:%M:%SZ"), "bucket": "day"})
        except Exception as exc:
            self.log.warning(f"analytics unavailable: {describe_error(exc)}")
            return
        self.live.set_usage(analytics)

    @work(group="role", exit_on_error=False)
    async def fetch_role(self) -> None:
        try:
            me = await self.client.request("GET", "/api/auth/me")
        except ApiError as exc:
            self.report_error(exc)
            return
        except Exception:
            return  # unreachable: the banner says so; asked again on the next hello
        self.principal = (me or {}).get("principal") or {}
        self.role = self.principal.get("role")
        self.sub_title = f"{self.principal.get('name', '?')} ({self.role}) @ {self.base_url}"

    @work(exit_on_error=False)
    async def fetch_server(self, sid: int) -> None:
        """A server an event told us about that we do not (fully) know."""
        try:
            for _ in range(3):
                mark = self.live.server_marks.get(sid, 0)
                data = await self.client.request("GET", f"/api/vast-servers/{sid}")
                fresh = self.live.server_marks.get(sid, 0) == mark
                self.live.learn_server(Server.model_validate(data), fresh=fresh)
                if fresh:
                    break
        except ApiError as exc:
            if exc.status == 404:
                self.live.unknown_servers.discard(sid)
            else:
                raise
        finally:
            self._fetching_servers.discard(sid)

    @work(exit_on_error=False)
    async def fetch_generation(self, gid: int) -> None:
        try:
            self.live.learn_generation(await self.client.request("GET", f"/api/generations/{gid}"))
        except ApiError as exc:
            if exc.status == 404:
                self.live.unknown_generations.discard(gid)
            else:
                raise
        finally:
            self._fetching_generations.discard(gid)

    @work(group="recent", exclusive=True, exit_on_error=False)
    async def fetch_recent(self) -> None:
        try:
            rows = await self.client.request("GET", "/api/generations", params={"limit": 50})
        except ApiError as exc:
            if exc.status == 404:
                return
            raise
        self.live.add_recent(GenerationLive.from_api(g) for g in rows if g.get("status") not in ("queued",
                                                                                                   "processing"))

    @work(group="audit", exclusive=True, exit_on_error=False)
    async def fetch_audit(self) -> None:
        """The latest audit entries, so the log does not start empty."""
        try:
            rows = await self.client.request("GET", "/api/audit-logs", params={"limit": 100})
        except ApiError:
            return
        seen = {(line.ts, line.text) for line in self.live.logs}
        lines = [audit_line(r) for r in reversed(rows or [])]
        fresh = [line for line in lines if (line.ts, line.text) not in seen]
        if fresh:
            merged = sorted([*fresh, *self.live.logs], key=lambda line: line.ts)
            self.live.logs.clear()
            self.live.logs.extend(merged)
            for screen in self._log_screens():
                screen.reload()

    def _log_screens(self) -> list[Any]:
        try:
            stack = self._screen_stacks.get("logs", [])
        except AttributeError:  # pragma: no cover
            return []
        return [s for s in stack if hasattr(s, "reload") and s.is_mounted]

    # -- errors -------------------------------------------------------------------------

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state is WorkerState.ERROR and event.worker.error is not None:
            self.report_error(event.worker.error)

    def report_error(self, exc: BaseException, node: Any = None) -> None:
        """The one place an error of a worker ends: in place when ``node`` shows it there,
        otherwise as a notification. The console never exits on a daemon's error."""
        text = describe_error(exc)
        self.errors.append(text)
        if node is not None and getattr(node, "show_error", None) and node.show_error(exc):
            return
        title = "The daemon refused" if isinstance(exc, ApiError) else "Error"
        self.notify(text, title=title, severity="error", timeout=8, markup=False)

    # -- navigation and actions -----------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "switch_mode" and parameters and parameters[0] == self.current_mode:
            return False  # the footer does not offer the screen we are on
        if action == "launch" and type(self.screen).__name__ in ("LaunchScreen", "RentDialog"):
            return False
        return True

    def action_keys(self) -> None:
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def action_launch(self) -> None:
        screens = _screens()
        if not isinstance(self.screen, screens.LaunchScreen):
            self.push_screen(screens.LaunchScreen())

    def action_generate(self, server_id: int | None = None) -> None:
        self.push_screen(_screens().GenerateScreen(server_id))

    def launched(self, result: dict[str, Any]) -> None:
        """A rental was accepted: back to the fleet, where its row appears and is selected."""
        sid = result.get("id")
        self.notify(f"Server #{sid} (Vast {result.get('vastId')}): {result.get('message', 'launching')}",
                    title="Launch")
        while isinstance(self.screen, _screens().LaunchScreen):
            self.pop_screen()
        self.switch_mode("fleet")
        self.pending_select = sid

    def generation_started(self, result: dict[str, Any], server_id: int) -> None:
        gid = result.get("generationId")
        self.notify(f"Generation #{gid} on {self.server_name(server_id)}: {result.get('message', 'started')} "
                    f"(about {result.get('estimatedTime', '?')})", title="Generate")
        while isinstance(self.screen, _screens().GenerateScreen):
            self.pop_screen()
        self.switch_mode("generations")

    def open_server(self, sid: int) -> None:
        self.push_screen(_screens().ServerDetailScreen(sid))

    def open_generation(self, gid: int) -> None:
        self.push_screen(_screens().GenerationDetailScreen(gid))

    def confirm_destroy(self, sid: int) -> None:
        if self.read_only:
            self.notify(f"Cannot destroy: {VIEWER_REASON}.", severity="warning")
            return
        server = self.live.servers.get(sid)
        name = server.name if server is not None else f"#{sid}"
        usage = self.live.usage_now(sid)
        cost = money(usage[1]) if usage is not None else "unknown"
        hourly = f"{price(server.price_per_hour)}/h" if server is not None and server.price_per_hour else "—"
        body = (f"Destroy {name} (#{sid})?\n\nIt has cost {cost} so far at {hourly}. The instance is deleted at "
                "Vast and billing stops; its disk and anything not downloaded is lost. This cannot be undone.")

        def done(ok: bool | None) -> None:
            if ok:
                self.destroy_server(sid, name)

        self.push_screen(_screens().ConfirmDialog(f"Destroy {name}?", body, "Destroy", danger=True), done)

    @work(group="actions", exit_on_error=False)
    async def destroy_server(self, sid: int, name: str) -> None:
        result = await self.client.request("DELETE", f"/api/vast-servers/{sid}")
        message = (result or {}).get("message", "destroyed")
        self.notify(f"{name}: {message}", title="Destroy")
        for screen in self.screen_stack:
            if isinstance(screen, _screens().ServerDetailScreen) and screen.server_id == sid:
                screen.dismiss()


@functools.cache
def _screens() -> SimpleNamespace:
    """The screens other than the fleet, imported the first time one is shown."""
    from socialsync.tui.screens.dialogs import ConfirmDialog
    from socialsync.tui.screens.generate import GenerateScreen
    from socialsync.tui.screens.generation_detail import GenerationDetailScreen
    from socialsync.tui.screens.generations import GenerationsScreen
    from socialsync.tui.screens.launch import LaunchScreen
    from socialsync.tui.screens.logs import LogsScreen
    from socialsync.tui.screens.server_detail import ServerDetailScreen

    return SimpleNamespace(
        ConfirmDialog=ConfirmDialog, GenerateScreen=GenerateScreen, GenerationDetailScreen=GenerationDetailScreen,
        GenerationsScreen=GenerationsScreen, LaunchScreen=LaunchScreen, LogsScreen=LogsScreen,
        ServerDetailScreen=ServerDetailScreen,
    )


def run_tui(base_url: str, api_key: str | None, *, transport: str = "auto") -> int:
    """Run the console against the daemon at ``base_url`` until the operator quits."""
    from socialsync.tui.zmq_transport import daemon_client

    async def main() -> int:
        async with daemon_client(base_url, api_key) as client:
            app = SocialSyncApp(client, transport=transport)
            await app.run_async()
            return app.return_code or 0

    return asyncio.run(main())


def run(argv: list[str]) -> int:
    """A bare command line (``--url``, ``--key``, ``--transport``) until the CLI's arrives."""
    p = argparse.ArgumentParser(prog="socialsync", description="The SocialSync console.")
    p.add_argument("--url", default=os.environ.get("SOCIALSYNC_URL", DEFAULT_URL))
    p.add_argument("--key", default=os.environ.get("SOCIALSYNC_API_KEY"))
    p.add_argument("--transport", choices=("auto", "ws", "zmq"), default="auto")
    args = p.parse_args(argv)
    return run_tui(args.url, args.key, transport=args.transport)
