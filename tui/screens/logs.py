"""Logs: the tail of the daemon's events and audit entries, filterable by server."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Input

from socialsync.tui.screens.base import LiveScreen
from socialsync.tui.state import Changed, LogLine
from socialsync.tui.widgets.connection_banner import ConnectionBanner
from socialsync.tui.widgets.event_log import EventLog


class LogsScreen(LiveScreen):
    TITLE = "Logs"

    BINDINGS = [
        Binding("slash", "filter", "Filter by server", id="logs.filter"),
        Binding("escape", "clear_filter", "Clear filter", id="logs.clear", show=False),
        Binding("end", "follow", "Follow", id="logs.follow", show=False),
    ]

    def __init__(self) -> None:
        super().__init__(id="logs")
        self.server_filter = ""

    def compose(self) -> ComposeResult:
        yield ConnectionBanner()
        yield Input(placeholder="server: #id or name (empty: every server) — enter applies, esc clears",
                    id="server-filter")
        yield EventLog(id="event-log")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        super().on_mount()
        self.log_widget.accept = self.accepts
        self.reload()
        self.log_widget.focus()

    @property
    def log_widget(self) -> EventLog:
        return self.query_one(EventLog)

    def reload(self) -> None:
        self.log_widget.replace(self.live.logs)
        self._title()

    def _title(self) -> None:
        where = f"server {self.server_filter}" if self.server_filter else "every server"
        self.log_widget.border_title = f"Events and audit — {where}"
        self.log_widget.border_subtitle = f"{len(self.live.logs)} kept, newest last"

    def on_live_changed(self, message: Changed) -> None:
        if message.logs:
            self.log_widget.add(message.logs)
            self._title()

    # -- the filter ---------------------------------------------------------------------

    def accepts(self, line: LogLine) -> bool:
        text = self.server_filter.strip().lower()
        if not text:
            return True
        ids = self._server_ids(text)
        if line.server_id is not None:
            return line.server_id in ids
        return False

    def _server_ids(self, text: str) -> set[int]:
        ids: set[int] = set()
        bare = text.lstrip("#")
        if bare.isdigit():
            ids.add(int(bare))
        for sid, server in self.live.servers.items():
            if text in server.name.lower():
                ids.add(sid)
        return ids

    def action_filter(self) -> None:
        self.query_one("#server-filter", Input).focus()

    @on(Input.Submitted, "#server-filter")
    def _apply(self, event: Input.Submitted) -> None:
        self.server_filter = event.value.strip()
        self.reload()
        self.log_widget.focus()

    def action_clear_filter(self) -> None:
        self.query_one("#server-filter", Input).value = ""
        self.server_filter = ""
        self.reload()
        self.log_widget.focus()

    def action_follow(self) -> None:
        self.log_widget.scroll_end(animate=False)
