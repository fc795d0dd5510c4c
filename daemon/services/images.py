"""Generation outputs, kept by the daemon: servers are rented and die, images must not.

Each output is fetched from ComfyUI's ``/view`` (kept in memory up to ``IN_MEMORY``
bytes, else streamed into a temporary file under the images directory), then checked to
be a real image (Pillow), hashed and written to ``<images_dir>/<sha[:2]>/<sha>.<ext>``
(via a temporary file and a rename; content addressed: the same bytes are stored once),
all of that in one thread hop. Creating a file is the slowest part of that, so a few
empty temporary files are made ahead, in the background. The daemon serves the images
as ``/api/images/<sha>.<ext>``; `path_for_name` accepts nothing but that exact shape, so
no request can reach another file.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
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
IN_MEMORY = 8 * 1024 * 1024  # an output up to this size is never written to disk but once
SPARES = 8  # empty temporary files made ahead of need (creating a file is the slowest step of storing one)


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


def _inspect(source: Path | io.BytesIO) -> tuple[str, int, int]:
    """Format and size of a real, complete image; raises ImageRejected otherwise. Blocking."""
    try:
        with Image.open(source) as img:
            fmt, (width, height) = img.format or "", img.size
            if width * height > MAX_PIXELS:
                raise ImageRejected(f"{width}x{height} pixels is too large")
            img.verify()
    except ImageRejected:
        raise
    except UnidentifiedImageError:  # its message names the file object (a temporary file, or memory)
        raise ImageRejected("not a valid image: not a format Pillow recognises") from None
    except (Image.DecompressionBombError, SyntaxError, OSError, ValueError) as exc:
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


def _check_and_store(data: bytes, root: Path, tmp: Path) -> tuple[str, str, int, int, str, bool]:
    """A body kept in memory: hash it, `_inspect` it, write it at its content address
    (through ``tmp``, which may exist already, empty, and a rename) unless those bytes
    are already stored, in one call (one thread hop). Returns (sha256, format, width,
    height, ext, whether it was written; else ``tmp`` was left alone). Blocking."""
    sha = hashlib.sha256(data).hexdigest()  # lets go of the GIL for large buffers
    fmt, width, height = _inspect(io.BytesIO(data))
    ext = FORMATS[fmt][0]
    final = root / sha[:2] / f"{sha}.{ext}"
    if not final.exists():  # else the same bytes are already stored
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            try:
                os.replace(tmp, final)
            except FileNotFoundError:  # the first image of its folder
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return sha, fmt, width, height, ext, True
    return sha, fmt, width, height, ext, False


def _create_empty(paths: list[Path]) -> list[Path]:
    """Blocking: create each file, empty (never one that exists); the ones made."""
    made = []
    for path in paths:
        try:
            with open(path, "xb"):
                pass
        except OSError as exc:  # only an optimisation: downloads create their own files meanwhile
            log.warning("could not create a spare image file path=%s error=%s", path, exc)
            break
        made.append(path)
    return made


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
        # Temporary names: unique within this run (a counter) and across runs (a random
        # prefix), without a call for random bytes per image.
        self._run = uuid.uuid4().hex[:12]
        self._seq = itertools.count()
        self._spares: list[Path] = []  # empty files in ``tmp``, ready to be written and renamed
        self._refill: asyncio.Task | None = None

    async def prepare(self) -> None:
        """Create the folders and drop temporary files a crash left behind."""
        def work() -> None:
            self.tmp.mkdir(parents=True, exist_ok=True)
            for leftover in self.tmp.iterdir():
                leftover.unlink(missing_ok=True)
        await asyncio.to_thread(work)

    def _take(self) -> Path:
        """A temporary path for one download: an empty spare file when there is one
        (made ahead, off the generation's path), else a fresh name; spares are topped
        up in the background, several per thread hop."""
        if len(self._spares) <= SPARES // 2 and self._refill is None:
            self._refill = asyncio.get_running_loop().create_task(self._make_spares(), name="image-spares")
        if self._spares:
            return self._spares.pop()
        return self.tmp / f"{self._run}-{next(self._seq)}.download"

    async def _make_spares(self) -> None:
        paths = [self.tmp / f"{self._run}-{next(self._seq)}.spare" for _ in range(SPARES - len(self._spares))]
        try:
            self._spares.extend(await asyncio.to_thread(_create_empty, paths))
        finally:
            self._refill = None

    async def download(self, client: ComfyClient, f: OutputFile) -> StoredImage:
        """Fetch one output through ``/view``, check it, store it by content: one thread
        hop for an output kept in memory (the usual case)."""
        tmp = self._take()
        try:
            body = await client.fetch(f.filename, f.subfolder, f.type, spill=tmp,
                                      in_memory=min(IN_MEMORY, self.max_bytes))
            size = body.size
            if size == 0:
                raise ImageRejected("empty file")
            if size > self.max_bytes:
                raise ImageRejected(f"{size} bytes is more than the {self.max_bytes} allowed")
            if body.data is not None:
                sha, fmt, width, height, ext, stored = await asyncio.to_thread(
                    _check_and_store, body.data, self.root, tmp)
                if not stored and tmp.suffix == ".spare":  # the same bytes were there: still an empty spare
                    self._spares.append(tmp)
            else:
                assert body.sha256 is not None
                sha = body.sha256
                fmt, width, height, ext = await asyncio.to_thread(_check_and_place, tmp, self.root, sha)
            content_type = FORMATS[fmt][1]
        except BaseException:
            await asyncio.to_thread(tmp.unlink, True)  # a spare, a spilled download, or nothing
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
