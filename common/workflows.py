"""Wire models of stored workflows: an API-format ComfyUI graph plus the mapping of the
generation parameters onto its node inputs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AliasChoices, BeforeValidator, Field

from socialsync.common.wire import RequestModel, WireModel

#: Parameter names a mapping may carry, in the spelling of the generate request.
MAPPABLE = ("prompt", "negativePrompt", "width", "height", "steps", "cfg_scale", "sampler", "scheduler", "seed",
            "checkpoint", "batchSize")


class NodeInput(RequestModel):
    """One node input of the graph: ``{"node": "6", "input": "text"}``."""

    node: str = Field(min_length=1, max_length=64, description="Node id (a key of the graph)")
    input: str = Field(min_length=1, max_length=128, description="Input name of that node")


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, dict) else value


Targets = Annotated[list[NodeInput], BeforeValidator(_as_list), Field(min_length=1, max_length=16)]


class WorkflowMapping(RequestModel):
    """Which node inputs receive each generation parameter. A parameter may feed several
    inputs (a list), or one (a single ``{node, input}`` object). Unmapped parameters
    keep the graph's own values, and a request that sets one is refused."""

    prompt: Targets | None = None
    negative_prompt: Targets | None = None
    width: Targets | None = None
    height: Targets | None = None
    steps: Targets | None = None
    cfg_scale: Targets | None = Field(default=None, alias="cfg_scale",
                                      validation_alias=AliasChoices("cfg_scale", "cfgScale"))
    sampler: Targets | None = None
    scheduler: Targets | None = None
    seed: Targets | None = None
    checkpoint: Targets | None = None
    batch_size: Targets | None = Field(default=None, validation_alias=AliasChoices("batchSize", "batch_size"))

    def targets(self) -> dict[str, list[NodeInput]]:
        """``{parameter name (wire spelling): [NodeInput, ...]}`` of the mapped parameters."""
        dumped = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if value:
                dumped[field.alias or name] = value
        return dumped


class WorkflowCreate(RequestModel):
    name: str = Field(min_length=1, max_length=100)
    description: str = Field(default="", max_length=2000)
    graph: dict[str, Any] = Field(description="API-format graph: {node_id: {class_type, inputs}}")
    mapping: WorkflowMapping | None = Field(
        default=None, description="Omitted: inferred from the graph (KSampler, CLIPTextEncode, EmptyLatentImage, "
                                  "CheckpointLoaderSimple)")


class WorkflowUpdate(RequestModel):
    """Fields given replace the stored ones. A new graph without a mapping keeps the old
    mapping when it still fits, otherwise the mapping is inferred again."""

    name: str | None = Field(default=None, min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=2000)
    graph: dict[str, Any] | None = None
    mapping: WorkflowMapping | None = None


class Workflow(WireModel):
    id: int
    name: str
    description: str
    graph: dict[str, Any]
    mapping: dict[str, list[dict[str, str]]] = Field(
        description="{parameter: [{node, input}]}; parameters are " + ", ".join(MAPPABLE))
    created_at: datetime
    updated_at: datetime

