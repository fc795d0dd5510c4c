"""Generation outputs, kept by the daemon: servers are rented and die, images must not.

Each output is streamed from ComfyUI's ``/view`` into a temporary file under the
images directory, checked to be a real image (Pillow, in a thread), hashed, and moved to
``<images_dir>/<sha[:2]>/<sha>.<ext>`` (content addressed: the same bytes are stored
once). The daemon serves them as ``/api/images/<sha>.<ext>``; `path_for_name` accepts
nothing but that exact shape, so no request can reach another file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from socialsync.daemon.comfy import ComfyClient, OutputFile

log = logging.getLogger(__name__)

FORMATS = {"PNG": ("png", "image/png"), "JPEG": ("jpg", "image/jpeg"), "WEBP": ("webp", "image/webp"),
           "GIF": ("gif", "image/gif")}
CONTENT_TYPES = {ext: ctype for ext, ctype in FORMATS.values()}
NAME = re.compile(r"^(?P<sha>[0-9a-f]{64})\.(?P<ext>png|jpg|webp|gif)$")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
MAX_BYTES = 256 * 1024 * 1024
MAX_PIXELS = 16384 * 16384


class ImageRejected(Exception):
    """What ComfyUI sent is not an image we keep."""


@dataclass(frozen=True)
class StoredImage:
    sha256: str
    ext: str
    path: str  # relative to the images directory
    size: int
    content_type: str
    width: int
    height: int
    filename: str
    node_id: str | None

    @property
    def name(self) -> str:
        return f"{self.sha256}.{self.ext}"

    @property
    def url(self) -> str:
        return image_url(self.sha256, self.ext)

    def as_row(self) -> dict[str, object]:
        return {"node_id": self.node_id, "filename": self.filename, "path": self.path,
                "content_type": self.content_type, "size": self.size, "sha256": self.sha256,
                "width": self.width, "height": self.height}


def image_url(sha256: str, ext: str) -> str:
    return f"/api/images/{sha256}.{ext}"


def ext_of(content_type: str) -> str:
    for ext, ctype in CONTENT_TYPES.items():
        if ctype == content_type:
            return ext
    return "png"


def is_image_output(f: OutputFile) -> bool:
    return f.kind == "images" and f.filename.lower().endswith(IMAGE_SUFFIXES)


def _inspect(path: Path) -> tuple[str, int, int]:
    """Format and size of a real, complete image; raises ImageRejected otherwise. Blocking."""
    try:
        with Image.open(path) as img:
            fmt, (width, height) = img.format or "", img.size
            if width * height > MAX_PIXELS:
                raise ImageRejected(f"{width}x{height} pixels is too large")
            img.verify()
    except ImageRejected:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, OSError, ValueError) as exc:
        raise ImageRejected(f"not a valid image: {type(exc).__name__}: {exc}") from None
    if fmt not in FORMATS:
        raise ImageRejected(f"unsupported image format {fmt or 'unknown'}")
    return fmt, width, height


def _check_and_place(tmp: Path, root: Path, sha: str) -> tuple[str, int, int, str]:
    """`_inspect` then `_place` at the content address, in one call (one thread hop).
    Returns (format, width, height, ext). Blocking."""
    fmt, width, height = _inspect(tmp)
    ext = FORMATS[fmt][0]
    _place(tmp, root / sha[:2] / f"{sha}.{ext}")
    return fmt, width, height, ext


def _place(tmp: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():  # the same bytes are already stored
        tmp.unlink(missing_ok=True)
    else:
        os.replace(tmp, final)


class ImageStore:
    def __init__(self, root: Path, max_bytes: int = MAX_BYTES):
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.max_bytes = max_bytes

    async def prepare(self) -> None:
        """Create the folders and drop temporary files a crash left behind."""
        def work() -> None:
            self.tmp.mkdir(parents=True, exist_ok=True)
            for leftover in self.tmp.iterdir():
                leftover.unlink(missing_ok=True)
        await asyncio.to_thread(work)

    async def download(self, client: ComfyClient, f: OutputFile) -> StoredImage:
        """Fetch one output through ``/view``, check it, store it by content."""
        tmp = self.tmp / f"{uuid.uuid4().hex}.download"
        try:
            size, sha, _ctype = await client.view(f.filename, f.subfolder, f.type, tmp)
            if size == 0:
                raise ImageRejected("empty file")
            if size > self.max_bytes:
                raise ImageRejected(f"{size} bytes is more than the {self.max_bytes} allowed")
            fmt, width, height, ext = await asyncio.to_thread(_check_and_place, tmp, self.root, sha)
            content_type = FORMATS[fmt][1]
        except BaseException:
            await asyncio.to_thread(tmp.unlink, True)
            raise
        return StoredImage(sha256=sha, ext=ext, path=f"{sha[:2]}/{sha}.{ext}", size=size, content_type=content_type,
                           width=width, height=height, filename=f.filename, node_id=f.node_id)

    def path_for_name(self, name: str) -> tuple[Path, str] | None:
        """``<sha>.<ext>`` → (file path, content type); None for anything else."""
        match = NAME.fullmatch(name)
        if match is None:
            return None
        sha, ext = match["sha"], match["ext"]
        return self.root / sha[:2] / f"{sha}.{ext}", CONTENT_TYPES[ext]

    def path_for_row(self, rel: str) -> Path | None:
        """The file of a generation_images row (its stored relative path, checked again)."""
        head, _, name = rel.partition("/")
        found = self.path_for_name(name)
        if found is None or head != name[:2]:
            return None
        return found[0]
