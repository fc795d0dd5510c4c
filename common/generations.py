"""Wire models of image generation: the seed's generate request and response, the
generation object of the lists, and the data of the generation events."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import AliasChoices, Field

from socialsync.common.wire import QueryModel, RequestModel, WireModel

MAX_SEED = 2**63 - 1  # SQLite integers are signed 64-bit; ComfyUI accepts 0..2^64-1


class GenerationStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (GenerationStatus.QUEUED, GenerationStatus.PROCESSING)
FINAL_STATUSES = (GenerationStatus.COMPLETED, GenerationStatus.FAILED, GenerationStatus.CANCELLED)


class GenerationParameters(RequestModel):
    """Seed: ``{"width", "height", "steps", "cfg_scale", "sampler"}`` (``cfg_scale`` in
    snake_case, as the seed writes it). Omitted values keep the workflow's own."""

    width: int | None = Field(default=None, ge=64, le=4096, multiple_of=8, description="pixels, a multiple of 8")
    height: int | None = Field(default=None, ge=64, le=4096, multiple_of=8, description="pixels, a multiple of 8")
    steps: int | None = Field(default=None, ge=1, le=150)
    cfg_scale: float | None = Field(default=None, ge=0, le=30, alias="cfg_scale",
                                    validation_alias=AliasChoices("cfg_scale", "cfgScale"))
    sampler: str | None = Field(default=None, min_length=1, max_length=64,
                                description="ComfyUI name (euler_ancestral) or A1111 name (euler_a, 'DPM++ 2M Karras')")
    scheduler: str | None = Field(default=None, min_length=1, max_length=64)
    seed: int | None = Field(default=None, ge=-1, le=MAX_SEED, description="absent or -1: a random seed (stored)")
    checkpoint: str | None = Field(default=None, min_length=1, max_length=255,
                                   description="default: the server's first checkpoint")
    batch_size: int | None = Field(default=None, ge=1, le=8,
                                   validation_alias=AliasChoices("batchSize", "batch_size"))


class GenerateRequest(RequestModel):
    """Seed: ``{"prompt", "negativePrompt", "workflowId", "parameters": {...}}``."""

    prompt: str = Field(min_length=1, max_length=20_000)
    negative_prompt: str = Field(default="", max_length=20_000)
    workflow_id: int | None = Field(default=None, ge=1, description="default: the built-in txt2img workflow")
    parameters: GenerationParameters = Field(default_factory=GenerationParameters)


class GenerateResponse(WireModel):
    """Seed: ``{"success", "generationId", "queueId", "message", "estimatedTime"}``."""

    success: bool = True
    generation_id: int
    queue_id: str = Field(description="ComfyUI's prompt id")
    message: str = "Image generation started"
    estimated_time: str = Field(examples=["30-60 seconds"])


class GenerationImage(WireModel):
    index: int
    url: str = Field(description="The daemon's own URL of the stored image (authenticated)")
    sha256: str
    size: int = Field(description="bytes")
    content_type: str
    width: int | None = None
    height: int | None = None
    filename: str = Field(description="The file name ComfyUI gave it")
    node_id: str | None = None


class Generation(WireModel):
    """Seed: ``{id, serverId, prompt, status, imageUrls, createdAt, completedAt}`` and more."""

    id: int
    server_id: int | None
    workflow_id: int | None = None
    prompt: str
    negative_prompt: str = ""
    status: GenerationStatus
    progress: int = Field(ge=0, le=100)
    step: int | None = None
    steps: int | None = None
    seed: int | None = None
    checkpoint: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict, description="The values the graph was run with")
    queue_id: str | None = None
    error: str | None = None
    image_urls: list[str] = Field(default_factory=list)
    images: list[GenerationImage] = Field(default_factory=list)
    principal: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: int | None = Field(default=None, description="From the start of execution to the end")


class GenerationListQuery(QueryModel):
    """Seed: ``limit`` (default 50), ``offset`` (default 0), ``status``. Newest first."""

    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=10_000_000)
    status: GenerationStatus | None = None
    before_id: int | None = Field(default=None, ge=1, description="Keyset paging: only ids below this one "
                                                                     "(constant time however deep the page)")


class AllGenerationsQuery(GenerationListQuery):
    server_id: int | None = Field(default=None, ge=0)


class GenerationCompletedData(WireModel):
    generation_id: int
    server_id: int | None
    status: Literal["completed"] = "completed"
    image_urls: list[str]
    duration_ms: int | None = None


class GenerationFailedData(WireModel):
    generation_id: int
    server_id: int | None
    status: Literal["failed", "cancelled"]
    error: str
