"""Plain value types returned by `ComfyClient` (wire shapes of reference §2-§4)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "DownloadedOutput",
    "ModelFile",
    "OutputFile",
    "QueueItem",
    "QueueState",
    "QueuedPrompt",
    "UploadedImage",
    "ViewResult",
    "iter_output_files",
]


@dataclass(frozen=True, slots=True)
class QueuedPrompt:
    """Answer of `POST /prompt`; `node_errors` may be non-empty when some outputs were dropped."""

    prompt_id: str
    number: float
    node_errors: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QueueItem:
    """One 5-element queue entry `[number, prompt_id, graph, extra_data, outputs_to_execute]`."""

    number: float
    prompt_id: str
    graph: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]

    @classmethod
    def from_wire(cls, raw: Any) -> QueueItem:
        items = list(raw) if isinstance(raw, list | tuple) else []
        items += [None] * (5 - len(items))
        return cls(
            number=items[0] if isinstance(items[0], int | float) else 0,
            prompt_id=str(items[1]),
            graph=items[2] if isinstance(items[2], dict) else {},
            extra_data=items[3] if isinstance(items[3], dict) else {},
            outputs=[str(o) for o in items[4]] if isinstance(items[4], list) else [],
        )

    @property
    def client_id(self) -> str | None:
        cid = self.extra_data.get("client_id")
        return cid if isinstance(cid, str) else None


@dataclass(frozen=True, slots=True)
class QueueState:
    """`GET /queue`: `pending` is sorted by `number` (ComfyUI sends the raw heap)."""

    running: list[QueueItem]
    pending: list[QueueItem]

    def find(self, prompt_id: str) -> QueueItem | None:
        for item in (*self.running, *self.pending):
            if item.prompt_id == prompt_id:
                return item
        return None

    def is_running(self, prompt_id: str) -> bool:
        return any(item.prompt_id == prompt_id for item in self.running)

    def position(self, prompt_id: str) -> int | None:
        """0 = running (or next), n = n prompts ahead of it; None if absent."""
        if self.is_running(prompt_id):
            return 0
        for i, item in enumerate(self.pending):
            if item.prompt_id == prompt_id:
                return i + len(self.running)
        return None


class ViewResult(NamedTuple):
    bytes_written: int
    sha256: str
    content_type: str


class ViewBody(NamedTuple):
    """What `ComfyClient.fetch` got: the body itself when it was small enough to keep in
    memory (`data`; nothing written, not hashed), else it was streamed to the spill path
    (`data` None, `sha256` of what was written)."""

    size: int
    content_type: str
    data: bytes | None
    sha256: str | None


@dataclass(frozen=True, slots=True)
class ModelFile:
    """A file of a model folder; `size`/`modified` are None when the server cannot tell."""

    name: str
    size: int | None = None
    modified: float | None = None


@dataclass(frozen=True, slots=True)
class UploadedImage:
    name: str
    subfolder: str
    type: str

    @property
    def annotated(self) -> str:
        """The value to put in `LoadImage.image` (`sub/name.png` or `name.png`)."""
        return f"{self.subfolder}/{self.name}" if self.subfolder else self.name


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One file of a history/`executed` output (`{filename, subfolder, type}`)."""

    node_id: str
    kind: str  # "images", "gifs", "video", "audio", ...
    filename: str
    subfolder: str
    type: str


@dataclass(frozen=True, slots=True)
class DownloadedOutput:
    file: OutputFile
    path: Path
    bytes_written: int
    sha256: str
    content_type: str


def iter_output_files(outputs: dict[str, Any]) -> Iterator[OutputFile]:
    """Every `{filename, subfolder, type}` entry of a history `outputs` dict, in node order."""
    for node_id, ui in outputs.items():
        if not isinstance(ui, dict):
            continue
        for kind, entries in ui.items():
            if not isinstance(entries, list):
                continue
            for entry in entries:
                if isinstance(entry, dict) and isinstance(entry.get("filename"), str):
                    yield OutputFile(
                        node_id=str(node_id),
                        kind=str(kind),
                        filename=entry["filename"],
                        subfolder=str(entry.get("subfolder") or ""),
                        type=str(entry.get("type") or "output"),
                    )
