"""Wire models of model management: what a server has installed, the curated catalogue,
downloads and their ``model_download`` events, and which model is on which server.

The input rules live here as plain functions (each returns the reason a value is
refused, or None) so the daemon and its clients check the same things. They are strict
on purpose: a value that reaches a shell on a rented server is quoted *and* has no
shell metacharacters to begin with.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from urllib.parse import unquote, urlsplit

from pydantic import Field

from socialsync.common.wire import QueryModel, RequestModel, WireModel

#: ComfyUI's model folders (0.3.64 ``GET /models``) that may receive a download. ``configs``
#: (YAML) and ``custom_nodes`` (code!) are ComfyUI folders too, but never download targets.
MODEL_FOLDERS: tuple[str, ...] = (
    "checkpoints", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
    "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
    "upscale_models", "hypernetworks", "photomaker", "classifiers", "model_patches",
    "audio_encoders",
)  # fmt: skip
#: Folders ComfyUI lists that are not model folders.
NON_MODEL_FOLDERS = frozenset({"configs", "custom_nodes"})
#: Legacy names ComfyUI still scans on disk but does not accept as folder names.
LEGACY_FOLDERS = {"clip": "text_encoders", "unet": "diffusion_models", "t2i_adapter": "controlnet"}
MODEL_EXTENSIONS = ("safetensors", "ckpt", "pt", "pth", "bin", "gguf", "sft")
SHELL_METACHARACTERS = frozenset(";|&$`<>(){}!*?[]'\"\\\n")
FILENAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_FILENAME = 200
MAX_URL = 2048


def _metachars(value: str, allowed: str = "") -> str | None:
    found = sorted({c for c in value if c in SHELL_METACHARACTERS and c not in allowed})
    if not found:
        return None
    shown = ", ".join("newline" if c == "\n" else repr(c) for c in found)
    return f"contains shell metacharacters ({shown})"


def folder_problem(folder: str) -> str | None:
    if folder in MODEL_FOLDERS:
        return None
    if folder in LEGACY_FOLDERS:
        return f"'{folder}' is a legacy folder name; use '{LEGACY_FOLDERS[folder]}'"
    return f"unknown model folder; one of: {', '.join(MODEL_FOLDERS)}"


def filename_problem(name: str) -> str | None:
    if not name:
        return "is empty"
    if CONTROL.search(name):
        return "contains control characters"
    if "/" in name or "\\" in name:
        return "may not contain '/' or '\\' (a file name, not a path)"
    if ".." in name:
        return "may not contain '..'"
    if name.startswith("."):
        return "may not start with '.'"
    if len(name) > MAX_FILENAME:
        return f"is longer than {MAX_FILENAME} characters"
    problem = _metachars(name)
    if problem:
        return problem
    if not FILENAME.match(name):
        return "may contain only letters, digits and . _ + - (and may not start with - or +)"
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext not in MODEL_EXTENSIONS:
        return f"must end in one of: {', '.join('.' + e for e in MODEL_EXTENSIONS)}"
    return None


def url_problem(url: str) -> str | None:
    if not url:
        return "is empty"
    if len(url) > MAX_URL:
        return f"is longer than {MAX_URL} characters"
    if CONTROL.search(url) or any(c.isspace() for c in url):
        return "contains whitespace or control characters"
    # '?' and '&' are URL syntax inside the query (Civitai's downloads need them): allowed
    # there only. The URL reaches the server over stdin (fetch_model's options), never a
    # command line, so no shell ever sees it.
    base, _, query = url.partition("?")
    problem = _metachars(base) or _metachars(query, allowed="?&")
    if problem:
        return problem
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "may not carry credentials; hub tokens come from the daemon's settings (models.hfToken …)"
    return None


def text_problem(value: str, *, path_like: bool = False) -> str | None:
    if CONTROL.search(value):
        return "contains control characters"
    problem = _metachars(value)
    if problem:
        return problem
    if path_like and ("/" in value or "\\" in value or ".." in value):
        return "may not contain '/', '\\' or '..'"
    return None


def filename_from_url(url: str) -> str:
    """The last path segment of a URL, percent-decoded ('' when there is none)."""
    try:
        path = urlsplit(url).path
    except ValueError:
        return ""
    return unquote(path.rsplit("/", 1)[-1])


def looks_like_filename(name: str) -> bool:
    return "." in name and name.rsplit(".", 1)[-1].lower() in MODEL_EXTENSIONS


class DownloadStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_DOWNLOAD_STATUSES = (DownloadStatus.QUEUED, DownloadStatus.RUNNING)


class DownloadMethod(StrEnum):
    SSH = "ssh"
    MANAGER = "manager"


class InstalledModel(WireModel):
    name: str = Field(description="Path relative to the folder, as ComfyUI lists it (may hold a subfolder)")
    size: int | None = Field(default=None, description="Bytes, when ComfyUI tells (/experiment/models)")


class ServerModels(WireModel):
    """``GET /api/comfy/:serverId/models``: installed models grouped by folder."""

    server_id: int
    folders: dict[str, list[InstalledModel]] = Field(description="Folder → files; folders ComfyUI reports")
    count: int
    refreshed_at: datetime | None = None
    stale: bool = Field(default=False, description="True when ComfyUI did not answer and this is the last "
                                                   "list the daemon saw")


class CatalogModel(WireModel):
    """One entry of the curated catalogue shipped with the daemon."""

    id: str
    name: str
    folder: str
    filename: str
    family: str = Field(description="Base model family: sd15, sdxl, sd35, flux, any …")
    size: int | None = Field(default=None, description="Bytes (approximate)")
    url: str
    sha256: str | None = Field(default=None, description="When the publisher gives one")
    license: str
    gated: bool = Field(default=False, description="Needs a hub token (accept the licence on the hub first)")
    description: str = ""
    installed: bool = False


class AvailableModels(WireModel):
    """``GET /api/comfy/:serverId/available-models``: the catalogue by folder."""

    server_id: int
    folders: dict[str, list[CatalogModel]]
    count: int


class AvailableModelsQuery(QueryModel):
    folder: str | None = None
    family: str | None = None


class ModelDownloadCreate(RequestModel):
    """Seed: ``{"name", "url", "folder", "description"}``; ``sha256`` and ``filename`` optional.
    Without ``filename`` the file is named after ``name`` when that is a file name, else
    after the last segment of the URL."""

    name: str = Field(min_length=1, max_length=200)
    url: str = Field(min_length=1, max_length=MAX_URL)
    folder: str = Field(min_length=1, max_length=64)
    description: str = Field(default="", max_length=1000)
    sha256: str | None = Field(default=None, description="64 hex digits; the file is kept only if it matches")
    filename: str | None = Field(default=None, max_length=MAX_FILENAME)


class ModelDownload(WireModel):
    id: int
    server_id: int
    name: str
    description: str = ""
    url: str
    folder: str
    filename: str
    sha256: str | None = None
    method: DownloadMethod | None = None
    status: DownloadStatus
    bytes_done: int = 0
    bytes_total: int | None = None
    rate: float | None = Field(default=None, description="Bytes per second")
    error: str | None = None
    created_at: datetime
    updated_at: datetime


class DownloadAccepted(WireModel):
    success: bool = True
    download_id: int
    status: DownloadStatus
    method: DownloadMethod
    message: str
    download: ModelDownload


class ModelDownloadData(WireModel):
    """The ``model_download`` event (throttled to a few per second per download)."""

    download_id: int
    server_id: int
    name: str
    folder: str
    filename: str
    status: DownloadStatus
    bytes_done: int = 0
    bytes_total: int | None = None
    rate: float | None = None
    error: str | None = None


class PresenceServer(WireModel):
    id: int
    name: str


class PresenceEntry(WireModel):
    folder: str
    name: str
    size: int | None = None
    server_ids: list[int]


class ModelPresence(WireModel):
    """``GET /api/models/presence``: which model is on which (live) server, from the
    daemon's last view of each server."""

    models: list[PresenceEntry]
    servers: list[PresenceServer]


class PresenceQuery(QueryModel):
    refresh: bool = Field(default=False, description="Ask every ready server before answering")
