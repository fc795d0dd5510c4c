"""Async client of ComfyUI's HTTP and websocket API (`ComfyClient`, `ComfyWatcher`)."""

from socialsync.daemon.comfy.client import ComfyClient, OnCall
from socialsync.daemon.comfy.errors import (
    ComfyError,
    ComfyHTTPError,
    ComfyNotFoundError,
    ComfyPromptRejected,
    ComfyUnavailableError,
    NodeProblem,
)
from socialsync.daemon.comfy.models import (
    DownloadedOutput,
    ModelFile,
    OutputFile,
    QueuedPrompt,
    QueueItem,
    QueueState,
    UploadedImage,
    ViewResult,
    iter_output_files,
)
from socialsync.daemon.comfy.watcher import (
    Cached,
    ComfyWatcher,
    Executed,
    Executing,
    Finished,
    Outcome,
    Progress,
    Started,
    WatchEvent,
    outcome_from_history,
)

__all__ = [
    "Cached",
    "ComfyClient",
    "ComfyError",
    "ComfyHTTPError",
    "ComfyNotFoundError",
    "ComfyPromptRejected",
    "ComfyUnavailableError",
    "ComfyWatcher",
    "DownloadedOutput",
    "Executed",
    "Executing",
    "Finished",
    "ModelFile",
    "NodeProblem",
    "OnCall",
    "Outcome",
    "OutputFile",
    "Progress",
    "QueueItem",
    "QueueState",
    "QueuedPrompt",
    "Started",
    "UploadedImage",
    "ViewResult",
    "WatchEvent",
    "iter_output_files",
    "outcome_from_history",
]
