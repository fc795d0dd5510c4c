"""The SocialSync console (placeholder screen until the TUI issue lands)."""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.widgets import Footer, Header, Static


class SocialSyncApp(App):
    TITLE = "SocialSync"
    BINDINGS = [("q", "quit", "Quit")]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("SocialSync console — the fleet view arrives with the TUI issue.")
        yield Footer()


def run(argv: list[str]) -> int:
    SocialSyncApp().run()
    return 0
