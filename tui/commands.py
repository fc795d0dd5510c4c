"""The command palette: every action of the console, by name.

The hits are the bindings in force on the current screen (the app's and the screen's,
with their descriptions and keys, so the palette and the footer never disagree), the
screen's own ``palette_commands()`` (a server's tabs), plus "Open <server>" and
"Generate on <server>" for each server. An action a viewer key may not use is listed
with the reason instead of running."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.screen import Screen

VIEWER = "disabled: this key has the viewer role"


class SocialSyncCommands(Provider):
    def commands(self) -> Iterator[tuple[str, Callable[[], Any], str]]:
        """(title, callback, help) of every command available now."""
        app: Any = self.app
        screen = self.screen
        seen: set[str] = set()
        for active in screen.active_bindings.values():
            binding = active.binding
            node = active.node
            if not binding.description or not isinstance(node, Screen | type(app)):
                continue
            title = binding.description
            if title in seen:
                continue
            seen.add(title)
            display_key = app.get_key_display(binding)
            if active.enabled:
                yield title, partial(node.run_action, binding.action), f"key {display_key}"
            else:
                reason = VIEWER if app.read_only else "disabled here"
                yield title, partial(app.notify, f"{title}: {reason}.", severity="warning"), f"{reason}"
        extra = getattr(screen, "palette_commands", None)
        for title, action, help_text in extra() if callable(extra) else ():
            if title not in seen:
                seen.add(title)
                yield title, partial(screen.run_action, action), help_text
        yield "Fleet", partial(app.switch_mode, "fleet"), "the servers (key 1)"
        yield "Generations", partial(app.switch_mode, "generations"), "running and finished generations (key 2)"
        yield "Logs", partial(app.switch_mode, "logs"), "daemon events and audit entries (key 3)"
        yield "Launch a server", app.action_launch, "search Vast offers and rent one (key l)"
        yield "Reconnect now", app.action_reconnect, "drop the event stream and resume from the last seq"
        for sid, server in sorted(app.live.servers.items()):
            yield f"Open {server.name} (#{sid})", partial(app.open_server, sid), f"{server.status}/{server.setup_status}"
            if str(server.setup_status) == "ready":
                yield f"Generate on {server.name} (#{sid})", partial(app.action_generate, sid), "prompt, size, steps …"

    async def discover(self) -> Hits:
        for title, callback, help_text in self.commands():
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, callback, help_text in self.commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, text=title, help=help_text)
