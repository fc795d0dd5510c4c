"""One generation: prompt, parameters, timings, and its images' URLs (save or copy them)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Label, ProgressBar, Static

from socialsync.common.errors import ApiError
from socialsync.tui.format import GENERATION_STYLES, millis, size, stamp
from socialsync.tui.screens.base import LiveScreen
from socialsync.tui.state import ACTIVE, Changed
from socialsync.tui.widgets.connection_banner import ConnectionBanner
from socialsync.tui.widgets.role_notice import RoleNotice

SAVE_DIR = Path("socialsync-images")


async def fetch_bytes(client: Any, path: str) -> bytes:
    """An image from the daemon (``DaemonClient.request`` decodes text; images are bytes)."""
    fetch = getattr(client, "fetch_bytes", None)
    if fetch is not None:  # a client that has it (the fake of the tests)
        return await fetch(path)
    async with client.session.get(client.url(path), headers=client.auth_headers) as resp:
        body = await resp.read()
        if resp.status >= 400:
            raise ApiError(resp.status, f"HTTP_{resp.status}", resp.reason or "image download failed")
        return body


class GenerationDetailScreen(LiveScreen):
    # The footer must fit 80 columns: copying the URL (also enter on an image) is named
    # in the images' title, the palette (ctrl+p) and the keys panel (?) instead.
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="generation.back"),
        Binding("c", "copy_url", "Copy URL", id="generation.copy", show=False),
        Binding("s", "save", "Save", id="generation.save"),
        Binding("x", "cancel_generation", "Cancel", id="generation.cancel"),
        Binding("ctrl+r", "refresh", "Refresh", id="generation.refresh", show=False),
    ]

    def __init__(self, generation_id: int) -> None:
        super().__init__()
        self.generation_id = generation_id
        self.generation: dict[str, Any] | None = None
        self.saved: dict[int, Path] = {}

    def compose(self) -> ComposeResult:
        yield ConnectionBanner()
        yield RoleNotice(actions="cancelling")
        with VerticalScroll(id="generation-body"):
            yield Label(f"Generation #{self.generation_id}", id="generation-title", classes="section")
            yield ProgressBar(total=100, show_eta=False, id="generation-progress")
            yield Static("Loading …", id="generation-fields")
            yield Label("Images", classes="section")
            yield DataTable(id="images", cursor_type="row")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        super().on_mount()
        table = self.query_one("#images", DataTable)
        for key, label in (("index", "#"), ("url", "URL"), ("size", "Size"), ("dims", "W×H"), ("file", "File")):
            table.add_column(label, key=key)
        live = self.live.generations.get(self.generation_id)
        self.query_one(ProgressBar).update(progress=live.progress if live else 0)
        self.load()

    @work(group="load", exclusive=True, exit_on_error=False)
    async def load(self) -> None:
        self.generation = await self.ss.client.request("GET", f"/api/generations/{self.generation_id}")
        self.show()

    def show(self) -> None:
        g = self.generation
        if g is None:
            return
        status = str(g.get("status"))
        title = Text(f"Generation #{g['id']} ")
        title.append(status, style=GENERATION_STYLES.get(status, ""))
        title.append(f" on {self.ss.server_name(g.get('serverId'))}")
        self.query_one("#generation-title", Label).update(title)
        bar = self.query_one(ProgressBar)
        bar.update(progress=100 if status == "completed" else g.get("progress") or 0)
        bar.display = status in ACTIVE or status == "completed"

        fields = Table.grid(padding=(0, 2))
        fields.add_column(style="bright_black", no_wrap=True)
        fields.add_column(overflow="fold")
        fields.add_row("Prompt", g.get("prompt") or "")
        fields.add_row("Negative", g.get("negativePrompt") or "—")
        step = f"{g.get('step')}/{g.get('steps')}" if g.get("steps") else "—"
        fields.add_row("Progress", f"{g.get('progress', 0)}% (step {step})")
        params = g.get("parameters") or {}
        if params:
            fields.add_row("Parameters", ", ".join(f"{k}={v}" for k, v in params.items()))
        fields.add_row("Seed", str(g.get("seed") if g.get("seed") is not None else "—"))
        fields.add_row("Checkpoint", g.get("checkpoint") or "—")
        fields.add_row("Workflow", str(g.get("workflowId") or "built-in txt2img"))
        fields.add_row("Queue id", g.get("queueId") or "—")
        fields.add_row("Created", stamp(g.get("createdAt")))
        fields.add_row("Started", stamp(g.get("startedAt")))
        fields.add_row("Completed", stamp(g.get("completedAt")))
        fields.add_row("Took", millis(g.get("durationMs")))
        if g.get("principal"):
            fields.add_row("By", g["principal"])
        if g.get("error"):
            fields.add_row("Error", Text(g["error"], style="bold red"))
        for i, url in enumerate(g.get("imageUrls") or []):
            fields.add_row(f"Image {i}", Text(self.ss.image_url(url), style="underline"))
        for index, path in sorted(self.saved.items()):
            fields.add_row(f"Saved {index}", str(path))
        self.query_one("#generation-fields", Static).update(fields)

        table = self.query_one("#images", DataTable)
        table.clear()
        images = g.get("images") or [{"index": i, "url": u} for i, u in enumerate(g.get("imageUrls") or [])]
        for image in images:
            index = int(image.get("index", 0))
            saved = self.saved.get(index)
            dims = f"{image['width']}×{image['height']}" if image.get("width") else "—"
            table.add_row(str(index), self.ss.image_url(image["url"]), size(image.get("size")), dims,
                          str(saved) if saved else image.get("filename") or "—", key=str(index))
        table.border_title = f"{len(images)} image(s) — c copies the URL, s saves to ./{SAVE_DIR}/"

    def on_live_changed(self, message: Changed) -> None:
        if self.generation_id not in message.generations and not message.resynced:
            return
        live = self.live.generations.get(self.generation_id) or self.live.recent.get(self.generation_id)
        if live is None:
            return
        self.query_one(ProgressBar).update(progress=live.progress)
        was = (self.generation or {}).get("status")
        if live.status != was and (live.status not in ACTIVE or message.resynced):
            self.load()
        elif self.generation is not None and live.status in ACTIVE:
            self.generation.update(progress=live.progress, step=live.step, steps=live.steps, status=live.status)
            self.show()

    # -- actions ------------------------------------------------------------------------

    def _image(self) -> dict[str, Any] | None:
        g = self.generation or {}
        images = g.get("images") or [{"index": i, "url": u} for i, u in enumerate(g.get("imageUrls") or [])]
        if not images:
            self.notify("This generation has no image (yet).", severity="warning")
            return None
        table = self.query_one("#images", DataTable)
        row = table.cursor_row if table.row_count else 0
        return images[min(max(row, 0), len(images) - 1)]

    @on(DataTable.RowSelected, "#images")
    def _image_selected(self, event: DataTable.RowSelected) -> None:
        self.action_copy_url()

    def action_copy_url(self) -> None:
        image = self._image()
        if image is not None:
            url = self.ss.image_url(image["url"])
            self.app.copy_to_clipboard(url)
            self.notify(f"Copied {url}", title="Image URL")

    def action_save(self) -> None:
        if self._image() is not None:
            self.save_images()

    @work(group="save", exclusive=True, exit_on_error=False)
    async def save_images(self) -> None:
        g = self.generation or {}
        images = g.get("images") or [{"index": i, "url": u} for i, u in enumerate(g.get("imageUrls") or [])]
        await asyncio.to_thread(SAVE_DIR.mkdir, exist_ok=True)
        for image in images:
            name = image.get("filename") or image["url"].rsplit("/", 1)[-1]
            target = SAVE_DIR / f"gen{g['id']}-{int(image.get('index', 0))}-{Path(name).name}"
            await asyncio.to_thread(target.write_bytes, await fetch_bytes(self.ss.client, image["url"]))
            self.saved[int(image.get("index", 0))] = target
        self.show()
        where = await asyncio.to_thread(SAVE_DIR.resolve)
        self.notify(f"Saved {len(images)} image(s) in {where}", title="Images")

    def action_cancel_generation(self) -> None:
        g = self.generation or {}
        if g.get("status") not in ACTIVE:
            self.notify("Only a queued or running generation can be cancelled.", severity="warning")
            return
        if self.operator_allowed("cancel a generation"):
            self.cancel()

    @work(group="actions", exit_on_error=False)
    async def cancel(self) -> None:
        self.generation = await self.ss.client.request("DELETE", f"/api/generations/{self.generation_id}")
        self.show()

    def action_refresh(self) -> None:
        self.load()
