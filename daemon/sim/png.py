"""Deterministic images for the ComfyUI simulator (blocking: call through `asyncio.to_thread`).

A "render spec" is the simulator's stand-in for an IMAGE tensor:
`{"render": "noise", "material": str}` (pixels derived from a hash of everything
upstream: prompt text, seed, checkpoint, ...), `{"render": "solid", "color": 0xRRGGBB}`
or `{"render": "file", "path": str}` (a LoadImage input), plus `w`, `h`, `batch`.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

__all__ = ["image_size", "preview_jpeg", "render", "save_png"]

_GRID = 8  # the noise is an 8x8 colour grid, bicubically upscaled: smooth, seed-dependent


def _noise(material: str, index: int, width: int, height: int) -> Image.Image:
    raw = hashlib.shake_256(f"{material}/{index}".encode()).digest(_GRID * _GRID * 3)
    small = Image.frombytes("RGB", (_GRID, _GRID), raw)
    return small.resize((max(1, width), max(1, height)), Image.Resampling.BICUBIC)


def render(spec: dict[str, Any], index: int) -> Image.Image:
    """Image number `index` of a batch described by `spec`."""
    width, height = int(spec["w"]), int(spec["h"])
    kind = spec.get("render", "noise")
    if kind == "solid":
        color = int(spec.get("color", 0))
        return Image.new("RGB", (width, height), ((color >> 16) & 255, (color >> 8) & 255, color & 255))
    if kind == "file":
        with Image.open(spec["path"]) as img:
            out = img.convert("RGB")
        return out if out.size == (width, height) else out.resize((width, height))
    return _noise(str(spec.get("material", "")), index, width, height)


def save_png(img: Image.Image, path: Path, *, text: dict[str, str] | None = None, compress_level: int = 4) -> None:
    """Write `img` as PNG with ComfyUI-style text chunks (`prompt`, `workflow`, ...)."""
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", pnginfo=info, compress_level=compress_level)


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def preview_jpeg(material: str, step: int, size: int = 64) -> bytes:
    """A small JPEG standing in for the latent preview of one sampler step."""
    img = _noise(f"{material}#preview{step}", 0, size, size)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()
