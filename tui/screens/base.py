"""What every screen of the console shares: the live feed, the connection banner, one
place where the errors of its workers go, and actions a viewer key may not use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from textual import on
from textual.screen import ModalScreen, Screen
from textual.worker import Worker, WorkerState

from socialsync.tui.state import Changed, LiveState

if TYPE_CHECKING:
    from socialsync.tui.app import SocialSyncApp

#: Actions that change something at the daemon (they need an operator key). Opening the
#: Launch and Generate screens is not one: a viewer sees them, with their submit disabled.
OPERATOR_ACTIONS = frozenset({
    "destroy", "stop_start", "reboot", "download_model", "cancel_generation", "rent", "submit",
})
VIEWER_REASON = "this key has the viewer role (an operator key is needed)"


class ErrorsToApp:
    """Worker errors of this node go to the app's one error handler."""

    app: Any

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state is WorkerState.ERROR and event.worker.error is not None:
            self.app.report_error(event.worker.error, self)

    def show_error(self, exc: BaseException) -> bool:
        """Show ``exc`` in place; False to let the app notify it instead."""
        return False


class LiveScreen(ErrorsToApp, Screen):
    """A screen that follows the live state (``on_live_changed``)."""

    #: Actions of this screen that a viewer may not use.
    OPERATOR_ONLY: ClassVar[frozenset[str]] = OPERATOR_ACTIONS

    @property
    def ss(self) -> SocialSyncApp:
        return self.app  # type: ignore[return-value]

    @property
    def live(self) -> LiveState:
        return self.ss.live

    _live_mounted = False

    def on_mount(self) -> None:
        # Textual calls each class's on_mount along the MRO, and subclasses also call
        # super().on_mount() to subscribe first: subscribe and watch once.
        if self._live_mounted:
            return
        self._live_mounted = True
        self.live.subscribe(self)
        # Not at once (init=False): every refresh of the bindings recomposes the footer.
        self.watch(self.app, "role", self._role_changed, init=False)

    def _role_changed(self, role: str | None) -> None:
        if role == "viewer":
            self.refresh_bindings()  # the actions it may not use are shown disabled

    def on_unmount(self) -> None:
        self.live.unsubscribe(self)

    @on(Changed)
    def _changed(self, message: Changed) -> None:
        self.on_live_changed(message)

    def on_live_changed(self, message: Changed) -> None:
        """Redraw what ``message`` says changed."""

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in self.OPERATOR_ONLY and self.ss.read_only:
            return None  # shown, disabled; the RoleNotice says why
        return True

    def operator_allowed(self, what: str) -> bool:
        """False (and say why) when the key may not do ``what``."""
        if self.ss.read_only:
            self.notify(f"Cannot {what}: {VIEWER_REASON}.", severity="warning", title="Read-only")
            return False
        return True


class LiveModal(ErrorsToApp, ModalScreen):
    """A dialog; its workers' errors go to the app (or in place with ``show_error``)."""

    @property
    def ss(self) -> SocialSyncApp:
        return self.app  # type: ignore[return-value]
