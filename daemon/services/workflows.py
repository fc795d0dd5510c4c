"""Workflows: API-format ComfyUI graphs and where the generation parameters go in them.

- `validate_graph` refuses anything that is not API format (a UI export, a node without
  ``class_type``, a link to a node that does not exist, a cycle), naming the node.
- `BUILTIN_GRAPH`/`BUILTIN_MAPPING`: the txt2img graph used when no ``workflowId`` is given.
- `infer_mapping` finds the parameters of a graph that comes without a mapping.
- `apply` writes parameter values into a copy of a graph.
- `sampler_candidates`/`scheduler_candidates`: A1111 spellings (``euler_a``,
  ``DPM++ 2M Karras``) → ComfyUI's, to be checked against the server's own lists.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from socialsync.common.servers import MessageResponse
from socialsync.common.wire import now_iso
from socialsync.common.workflows import MAPPABLE, Workflow, WorkflowCreate, WorkflowMapping, WorkflowUpdate
from socialsync.daemon.errors import BadRequest, NotFound
from socialsync.daemon.store import workflows as store
from socialsync.daemon.store.db import Database

MAX_NODES = 5000
Mapping = dict[str, list[dict[str, str]]]  # {"prompt": [{"node": "6", "input": "text"}], ...}

BUILTIN_GRAPH: dict[str, Any] = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ""},
          "_meta": {"title": "Load Checkpoint"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1},
          "_meta": {"title": "Empty Latent Image"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]},
          "_meta": {"title": "Positive prompt"}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]},
          "_meta": {"title": "Negative prompt"}},
    "3": {"class_type": "KSampler", "inputs": {
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
        "seed": 0, "steps": 20, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0},
          "_meta": {"title": "KSampler"}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]},
          "_meta": {"title": "VAE Decode"}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "socialsync"},
          "_meta": {"title": "Save Image"}},
}
BUILTIN_MAPPING: Mapping = {
    "prompt": [{"node": "6", "input": "text"}],
    "negativePrompt": [{"node": "7", "input": "text"}],
    "width": [{"node": "5", "input": "width"}],
    "height": [{"node": "5", "input": "height"}],
    "batchSize": [{"node": "5", "input": "batch_size"}],
    "steps": [{"node": "3", "input": "steps"}],
    "cfg_scale": [{"node": "3", "input": "cfg"}],
    "sampler": [{"node": "3", "input": "sampler_name"}],
    "scheduler": [{"node": "3", "input": "scheduler"}],
    "seed": [{"node": "3", "input": "seed"}],
    "checkpoint": [{"node": "4", "input": "ckpt_name"}],
}
BUILTIN_OUTPUT_NODE = "9"
BUILTIN_NAME = "txt2img (built-in)"
BUILTIN_DESCRIPTION = ("The daemon's default graph (used when a request names no workflow): checkpoint, "
                       "prompt, negative prompt, size, batch, steps, cfg, sampler, scheduler, seed.")

# Inputs of the common sampler nodes, by parameter.
_SAMPLER_INPUTS = {
    "KSampler": {"seed": "seed", "steps": "steps", "cfg_scale": "cfg", "sampler": "sampler_name",
                 "scheduler": "scheduler"},
    "KSamplerAdvanced": {"seed": "noise_seed", "steps": "steps", "cfg_scale": "cfg", "sampler": "sampler_name",
                         "scheduler": "scheduler"},
}
_TEXT_INPUTS = ("text", "text_g", "text_l")


@dataclass(frozen=True)
class Resolved:
    """A graph ready to be filled: the stored workflow's or the built-in one."""

    workflow_id: int | None
    graph: dict[str, Any]
    mapping: Mapping


# ------------------------------------------------------------------ graph checks


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int) and not isinstance(
        value[1], bool)


def _node_error(node_id: str | None, class_type: Any, kind: str, message: str) -> BadRequest:
    where = f"node '{node_id}'" + (f" ({class_type})" if isinstance(class_type, str) and class_type else "")
    extra: dict[str, Any] = {}
    if node_id is not None:
        extra["node_errors"] = {node_id: {"errors": [{"type": kind, "message": message}],
                                          "class_type": class_type if isinstance(class_type, str) else None}}
    return BadRequest("Invalid workflow graph", f"{where}: {message}" if node_id is not None else message,
                      extra=extra)


def validate_graph(graph: Any) -> None:
    """Refuse a graph that ComfyUI's ``POST /prompt`` cannot take as API format."""
    if not isinstance(graph, dict) or not graph:
        raise BadRequest("Invalid workflow graph", "the graph must be a non-empty object {node_id: {class_type, inputs}}")
    if isinstance(graph.get("nodes"), list) and "links" in graph:
        raise BadRequest("Invalid workflow graph",
                         "this is a UI-format workflow (nodes/links); export it with 'Save (API Format)'")
    if len(graph) > MAX_NODES:
        raise BadRequest("Invalid workflow graph", f"at most {MAX_NODES} nodes")
    for node_id, node in graph.items():
        if not isinstance(node, dict):
            raise _node_error(node_id, None, "invalid_node", "a node must be an object {class_type, inputs}")
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type.strip():
            raise _node_error(node_id, None, "missing_class_type", "the node has no class_type (not API format)")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            raise _node_error(node_id, class_type, "invalid_inputs", "inputs must be an object")
        for name, value in inputs.items():
            if isinstance(value, list):
                if not is_link(value):
                    raise _node_error(node_id, class_type, "bad_linked_input",
                                      f"input '{name}' is a list but not a link [node_id, output_index] "
                                      "(wrap a literal list as {\"__value__\": [...]})")
                source, index = value
                if not isinstance(source, str) or source not in graph:
                    raise _node_error(node_id, class_type, "dangling_link",
                                      f"input '{name}' links to node '{source}', which is not in the graph")
                if index < 0:
                    raise _node_error(node_id, class_type, "bad_linked_input",
                                      f"input '{name}' links to a negative output index {index}")
    _check_acyclic(graph)


def _check_acyclic(graph: dict[str, Any]) -> None:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    for root in graph:
        if state.get(root):
            continue
        stack: list[tuple[str, Iterable[str]]] = [(root, iter(_sources(graph, root)))]
        state[root] = 1
        while stack:
            node_id, children = stack[-1]
            for child in children:
                if state.get(child) == 1:
                    raise _node_error(child, graph[child].get("class_type"), "dependency_cycle",
                                      "the graph has a dependency cycle through this node")
                if not state.get(child):
                    state[child] = 1
                    stack.append((child, iter(_sources(graph, child))))
                    break
            else:
                state[node_id] = 2
                stack.pop()


def _sources(graph: dict[str, Any], node_id: str) -> list[str]:
    return [v[0] for v in (graph[node_id].get("inputs") or {}).values() if is_link(v)]


def validate_mapping(graph: dict[str, Any], mapping: Mapping) -> None:
    if "prompt" not in mapping:
        raise BadRequest("Invalid workflow mapping", "mapping.prompt is required: which input receives the prompt")
    for param, targets in mapping.items():
        if param not in MAPPABLE:
            raise BadRequest("Invalid workflow mapping", f"mapping.{param}: unknown parameter")
        for target in targets:
            node = graph.get(target["node"])
            if node is None:
                raise BadRequest("Invalid workflow mapping",
                                 f"mapping.{param}: node '{target['node']}' is not in the graph")
            value = (node.get("inputs") or {}).get(target["input"])
            if is_link(value):
                raise _node_error(target["node"], node.get("class_type"), "mapped_link",
                                  f"mapping.{param} targets input '{target['input']}', which is a link; "
                                  "map a literal input")


def infer_mapping(graph: dict[str, Any]) -> Mapping:
    """The mapping of a typical graph: the first KSampler and what feeds it."""
    mapping: Mapping = {}

    def add(param: str, node_id: str, name: str) -> None:
        value = (graph[node_id].get("inputs") or {}).get(name, None)
        if name in (graph[node_id].get("inputs") or {}) and not is_link(value):
            mapping.setdefault(param, []).append({"node": node_id, "input": name})

    ordered = sorted(graph, key=_id_key)
    sampler = next((n for n in ordered if graph[n].get("class_type") in _SAMPLER_INPUTS), None)
    if sampler is not None:
        inputs = graph[sampler].get("inputs") or {}
        for param, name in _SAMPLER_INPUTS[graph[sampler]["class_type"]].items():
            add(param, sampler, name)
        for param, link_name in (("prompt", "positive"), ("negativePrompt", "negative")):
            link = inputs.get(link_name)
            if is_link(link):
                for name in _TEXT_INPUTS:
                    add(param, link[0], name)
        latent = inputs.get("latent_image")
        if is_link(latent):
            for param, name in (("width", "width"), ("height", "height"), ("batchSize", "batch_size")):
                add(param, latent[0], name)
    loader = next((n for n in ordered if "ckpt_name" in (graph[n].get("inputs") or {})), None)
    if loader is not None:
        add("checkpoint", loader, "ckpt_name")
    if "prompt" not in mapping:
        raise BadRequest("Cannot infer the mapping",
                         "no KSampler whose positive input comes from a text encoder: give a mapping "
                         "(e.g. {\"prompt\": {\"node\": \"6\", \"input\": \"text\"}})")
    return mapping


def _id_key(node_id: str) -> tuple[int, int | str]:
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)


def apply(graph: dict[str, Any], mapping: Mapping, values: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``graph`` with ``values`` ({parameter: value}) written into the mapped inputs."""
    out = orjson.loads(orjson.dumps(graph))  # JSON data: a round trip is a deep copy, 10x faster
    for param, value in values.items():
        for target in mapping.get(param, ()):
            out[target["node"]].setdefault("inputs", {})[target["input"]] = value
    return out


def current(graph: dict[str, Any], mapping: Mapping, param: str) -> Any:
    """The value the graph holds for a parameter (its first target), or None."""
    targets = mapping.get(param)
    if not targets:
        return None
    return (graph[targets[0]["node"]].get("inputs") or {}).get(targets[0]["input"])


def mapping_to_json(mapping: WorkflowMapping) -> Mapping:
    return {param: [{"node": t.node, "input": t.input} for t in targets]
            for param, targets in mapping.targets().items()}


# --------------------------------------------------------------- sampler names

_A1111_SAMPLERS = {
    "euler_a": "euler_ancestral", "euler": "euler", "lms": "lms", "heun": "heun", "dpm2": "dpm_2",
    "dpm2_a": "dpm_2_ancestral", "dpm_2_a": "dpm_2_ancestral", "dpmpp_2s_a": "dpmpp_2s_ancestral",
    "dpmpp_2m": "dpmpp_2m", "dpmpp_sde": "dpmpp_sde", "dpmpp_2m_sde": "dpmpp_2m_sde",
    "dpmpp_3m_sde": "dpmpp_3m_sde", "dpm_fast": "dpm_fast", "dpm_adaptive": "dpm_adaptive", "ddim": "ddim",
    "unipc": "uni_pc", "lcm": "lcm", "deis": "deis", "ipndm": "ipndm", "ipndm_v": "ipndm_v",
    "dpmpp_2m_sde_heun": "dpmpp_2m_sde_heun", "ddpm": "ddpm",
}
_A1111_SCHEDULERS = {
    "automatic": "normal", "karras": "karras", "exponential": "exponential", "sgm_uniform": "sgm_uniform",
    "simple": "simple", "normal": "normal", "ddim": "ddim_uniform", "ddim_uniform": "ddim_uniform",
    "beta": "beta", "kl_optimal": "kl_optimal", "linear_quadratic": "linear_quadratic",
}
_SCHEDULE_SUFFIXES = ("karras", "exponential", "sgm_uniform", "beta", "kl_optimal")


def _norm(name: str) -> str:
    text = name.strip().lower().replace("++", "pp").replace("+", "p")
    return re.sub(r"[\s\-./]+", "_", text).strip("_")


def sampler_candidates(name: str) -> list[tuple[str, str | None]]:
    """(sampler_name, scheduler implied by the name or None), most literal first."""
    found: list[tuple[str, str | None]] = [(name, None)]
    norm = _norm(name)
    if norm.startswith("k_"):
        norm = norm[2:]
    schedule = None
    for suffix in _SCHEDULE_SUFFIXES:
        if norm.endswith("_" + suffix):
            norm, schedule = norm[: -len(suffix) - 1], suffix
            break
    for candidate in (norm, _A1111_SAMPLERS.get(norm)):
        if candidate and (candidate, schedule) not in found:
            found.append((candidate, schedule))
    return found


def scheduler_candidates(name: str) -> list[str]:
    norm = _norm(name)
    return list(dict.fromkeys(c for c in (name, norm, _A1111_SCHEDULERS.get(norm)) if c))


# ---------------------------------------------------------------------- service


def to_wire(row) -> Workflow:
    return Workflow(id=row["id"], name=row["name"], description=row["description"],
                    graph=orjson.loads(row["graph"]), mapping=orjson.loads(row["mapping"]),
                    created_at=row["created_at"], updated_at=row["updated_at"])


class WorkflowService:
    def __init__(self, db: Database):
        self.db = db

    async def _row(self, workflow_id: int):
        row = await store.get(self.db, workflow_id)
        if row is None:
            raise NotFound("Workflow not found", f"no workflow with id {workflow_id}")
        return row

    async def list(self) -> list[Workflow]:
        return [to_wire(r) for r in await store.list_all(self.db)]

    async def get(self, workflow_id: int) -> Workflow:
        return to_wire(await self._row(workflow_id))

    async def seed_builtin(self) -> None:
        """Once per installation: the built-in txt2img graph stored as workflow 1, so
        the API document's example request (``"workflowId": 1``) works on a fresh daemon.
        Changed or deleted later, it stays as the operator left it."""
        graph = orjson.dumps(BUILTIN_GRAPH).decode()
        mapping = orjson.dumps(BUILTIN_MAPPING).decode()

        def seed(conn) -> None:
            if conn.execute("SELECT 1 FROM meta WHERE key = 'builtin_workflow'").fetchone() is not None:
                return
            conn.execute("INSERT INTO meta (key, value) VALUES ('builtin_workflow', '1')")
            if conn.execute("SELECT 1 FROM workflows WHERE id = 1").fetchone() is None:
                now = now_iso()
                conn.execute("INSERT INTO workflows (id, name, description, graph, mapping, created_at, updated_at) "
                             "VALUES (1, ?, ?, ?, ?, ?, ?)", (BUILTIN_NAME, BUILTIN_DESCRIPTION, graph, mapping, now, now))

        await self.db.run(seed)

    async def create(self, req: WorkflowCreate) -> Workflow:
        validate_graph(req.graph)
        mapping = mapping_to_json(req.mapping) if req.mapping is not None else infer_mapping(req.graph)
        validate_mapping(req.graph, mapping)
        now = now_iso()
        workflow_id = await store.insert(self.db, {
            "name": req.name, "description": req.description, "graph": orjson.dumps(req.graph).decode(),
            "mapping": orjson.dumps(mapping).decode(), "created_at": now, "updated_at": now})
        return await self.get(workflow_id)

    async def update(self, workflow_id: int, req: WorkflowUpdate) -> Workflow:
        row = await self._row(workflow_id)
        graph = orjson.loads(row["graph"]) if req.graph is None else req.graph
        if req.graph is not None:
            validate_graph(graph)
        if req.mapping is not None:
            mapping = mapping_to_json(req.mapping)
        else:
            mapping = orjson.loads(row["mapping"])
            if req.graph is not None:
                try:
                    validate_mapping(graph, mapping)
                except BadRequest:
                    mapping = infer_mapping(graph)
        validate_mapping(graph, mapping)
        fields: dict[str, Any] = {"updated_at": now_iso(), "graph": orjson.dumps(graph).decode(),
                                  "mapping": orjson.dumps(mapping).decode()}
        if req.name is not None:
            fields["name"] = req.name
        if req.description is not None:
            fields["description"] = req.description
        if not await store.update(self.db, workflow_id, fields):
            raise NotFound("Workflow not found", f"no workflow with id {workflow_id}")
        return await self.get(workflow_id)

    async def delete(self, workflow_id: int) -> MessageResponse:
        if not await store.delete(self.db, workflow_id):
            raise NotFound("Workflow not found", f"no workflow with id {workflow_id}")
        return MessageResponse(message="Workflow deleted")

    async def resolve(self, workflow_id: int | None) -> Resolved:
        """The graph and mapping a generation starts from. Read-only: `apply` copies."""
        if workflow_id is None:
            return Resolved(None, BUILTIN_GRAPH, BUILTIN_MAPPING)
        row = await self._row(workflow_id)
        mapping = orjson.loads(row["mapping"])
        try:
            WorkflowMapping.model_validate(mapping)
        except ValidationError as exc:  # pragma: no cover - only if the row was edited by hand
            raise BadRequest("Invalid stored workflow", str(exc)) from None
        return Resolved(workflow_id, orjson.loads(row["graph"]), mapping)
