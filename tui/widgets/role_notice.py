"""The line a viewer key sees on screens whose actions it may not use."""

from __future__ import annotations

from textual.widgets import Static

READ_ONLY = ("Read-only: this key has the viewer role, so {actions} {are} disabled. "
             "Ask an admin for an operator key.")


class RoleNotice(Static):
    """Shown only when the daemon says the key is a viewer's."""

    DEFAULT_CSS = """
    RoleNotice { display: none; height: auto; padding: 0 1; background: $boost; color: $warning; }
    RoleNotice.-shown { display: block; }
    """

    def __init__(self, actions: str = "launching, generating, stopping, rebooting, destroying and downloads",
                 **kw) -> None:
        super().__init__(**kw)
        self.actions = actions

    def on_mount(self) -> None:
        self.watch(self.app, "role", self._show, init=True)

    def _show(self, role: str | None) -> None:
        shown = role == "viewer"
        self.set_class(shown, "-shown")
        are = "are" if " and " in self.actions or self.actions.endswith("s") else "is"
        self.update(READ_ONLY.format(actions=self.actions, are=are) if shown else "")
