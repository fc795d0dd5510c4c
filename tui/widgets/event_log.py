"""The tail of daemon events and audit entries, filterable by server."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from rich.text import Text
from textual.widgets import RichLog

from socialsync.tui.format import stamp
from socialsync.tui.state import LogLine

LEVEL_STYLES = {"error": "bold red", "warning": "yellow", "info": ""}
# event type → (tag, style): short tags keep the text readable at 80 columns
TAGS = {"server_status": ("server", "green"), "audit": ("audit", "magenta"), "generation_completed": ("gen", "cyan"),
        "generation_failed": ("gen", "red"), "generation_progress": ("gen", "cyan"), "model_download": ("model", "blue"),
        "log": ("log", "white"), "cost_action": ("cost", "yellow")}
MAX_LINES = 2000


class EventLog(RichLog):
    """A ``RichLog`` (bounded by ``max_lines``) that shows lines passing ``accept``."""

    DEFAULT_CSS = """
    EventLog { height: 1fr; border: round $primary-darken-2; }
    """

    def __init__(self, **kw) -> None:
        super().__init__(max_lines=MAX_LINES, wrap=True, min_width=20, markup=False, highlight=False, **kw)
        self.accept: Callable[[LogLine], bool] = lambda line: True
        self.shown = 0

    def add(self, lines: Iterable[LogLine]) -> None:
        for line in lines:
            if self.accept(line):
                self.write(render(line))
                self.shown += 1

    def replace(self, lines: Iterable[LogLine]) -> None:
        self.clear()
        self.shown = 0
        self.add(lines)


def render(line: LogLine) -> Text:
    text = Text(no_wrap=False)
    text.append(stamp(line.ts)[11:] if line.ts else "--:--:--", style="bright_black")
    tag, style = TAGS.get(line.type, (line.type[:6], ""))
    text.append(f" {tag:<6.6}", style=style)
    text.append(" ")
    text.append(line.text, style=LEVEL_STYLES.get(line.level, ""))
    return text
