"""Workflows: CRUD over HTTP, graph and mapping checks, and generating with a stored one."""

from __future__ import annotations

import copy

import pytest
from gen_helpers import rig

from socialsync.daemon import keys
from socialsync.daemon.errors import BadRequest
from socialsync.daemon.services.workflows import (
    BUILTIN_GRAPH,
    BUILTIN_MAPPING,
    infer_mapping,
    sampler_candidates,
    scheduler_candidates,
    validate_graph,
    validate_mapping,
)
from socialsync.daemon.sim.comfyui import txt2img_graph


def renumbered() -> dict:
    """The txt2img graph with other node ids, as an export from another ComfyUI would have."""
    ids = {"3": "12", "4": "10", "5": "11", "6": "20", "7": "21", "8": "30", "9": "31"}
    graph = {}
    for old, node in txt2img_graph(ckpt="v1-5-pruned-emaonly.safetensors", steps=3).items():
        node = copy.deepcopy(node)
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                node["inputs"][name] = [ids[value[0]], value[1]]
        graph[ids[old]] = node
    return graph


async def test_crud_and_inferred_mapping(daemon, admin):
    # A fresh daemon has one: the built-in txt2img as workflow 1 (the API document's
    # example request names it).
    async with admin.get("/api/workflows") as r:
        listed = await r.json()
        assert r.status == 200 and [(w["id"], w["name"]) for w in listed] == [(1, "txt2img (built-in)")]
    assert listed[0]["mapping"]["prompt"] == [{"node": "6", "input": "text"}]
    async with admin.delete("/api/workflows/1") as r:
        assert r.status == 200  # the operator's to change or delete
    await daemon.app[keys.WORKFLOWS].seed_builtin()  # (each start calls it)
    async with admin.get("/api/workflows") as r:
        assert await r.json() == []  # deleted stays deleted
    graph = renumbered()
    async with admin.post("/api/workflows", json={"name": "portrait", "description": "v1.5", "graph": graph}) as r:
        created = await r.json()
        assert r.status == 201, created
    wid = created["id"]
    assert created["name"] == "portrait" and created["graph"] == graph
    m = created["mapping"]
    assert m["prompt"] == [{"node": "20", "input": "text"}]
    assert m["negativePrompt"] == [{"node": "21", "input": "text"}]
    assert m["seed"] == [{"node": "12", "input": "seed"}] and m["cfg_scale"] == [{"node": "12", "input": "cfg"}]
    assert m["sampler"] == [{"node": "12", "input": "sampler_name"}]
    assert m["width"] == [{"node": "11", "input": "width"}] and m["batchSize"] == [{"node": "11", "input": "batch_size"}]
    assert m["checkpoint"] == [{"node": "10", "input": "ckpt_name"}]

    async with admin.get(f"/api/workflows/{wid}") as r:
        assert await r.json() == created
    async with admin.put(f"/api/workflows/{wid}", json={"name": "portrait 2",
                                                        "mapping": {"prompt": {"node": "20", "input": "text"},
                                                                    "cfgScale": [{"node": "12", "input": "cfg"}]}}) as r:
        updated = await r.json()
        assert r.status == 200, updated
    assert updated["name"] == "portrait 2" and updated["description"] == "v1.5"
    assert updated["mapping"] == {"prompt": [{"node": "20", "input": "text"}],
                                  "cfg_scale": [{"node": "12", "input": "cfg"}]}
    assert updated["updatedAt"] >= created["updatedAt"]
    async with admin.get("/api/workflows") as r:
        assert [w["id"] for w in await r.json()] == [wid]
    async with admin.delete(f"/api/workflows/{wid}") as r:
        assert r.status == 200 and (await r.json())["success"] is True
    for method in ("get", "put", "delete"):
        kw = {"json": {"name": "x"}} if method == "put" else {}
        async with admin.request(method, f"/api/workflows/{wid}", **kw) as r:
            assert r.status == 404 and (await r.json())["code"] == "NOT_FOUND"
    rows = await daemon.app[keys.DB].fetchall(
        "SELECT action, outcome FROM audit_logs WHERE action LIKE 'workflow.%' ORDER BY id")
    assert [(a["action"], a["outcome"]) for a in rows][:4] == [("workflow.delete", "success"),  # the built-in
        ("workflow.create", "success"), ("workflow.update", "success"), ("workflow.delete", "success")]


@pytest.mark.parametrize(("graph", "node", "words"), [
    ({"1": {"inputs": {"text": "x"}}}, "1", "class_type"),
    ({"1": {"class_type": "", "inputs": {}}}, "1", "class_type"),
    ({"1": {"class_type": "SaveImage", "inputs": {"images": ["99", 0]}}}, "1", "'99'"),
    ({"1": {"class_type": "SaveImage", "inputs": {"images": [5, 0]}}}, "1", "not in the graph"),
    ({"1": {"class_type": "SaveImage", "inputs": {"images": ["1", 0, 2]}}}, "1", "not a link"),
    ({"1": {"class_type": "A", "inputs": {"x": ["2", 0]}}, "2": {"class_type": "B", "inputs": {"y": ["1", 0]}}},
     None, "cycle"),
    ({"1": "CheckpointLoaderSimple"}, "1", "object"),
    ({"1": {"class_type": "A", "inputs": []}}, "1", "inputs"),
])
async def test_graphs_that_are_not_api_format_are_refused(admin, graph, node, words):
    async with admin.post("/api/workflows", json={"name": "bad", "graph": graph,
                                                  "mapping": {"prompt": {"node": "1", "input": "text"}}}) as r:
        data = await r.json()
        assert r.status == 400 and data["code"] == "VALIDATION_ERROR", data
    assert words in data["details"]
    if node is not None:
        assert data["details"].startswith(f"node '{node}'")
        assert list(data["nodeErrors"]) == [node]
    else:
        assert "nodeErrors" in data


async def test_mapping_checks(admin):
    graph = txt2img_graph()

    async def refused(body, status=400):
        async with admin.post("/api/workflows", json={"name": "w", "graph": graph, **body}) as r:
            data = await r.json()
            assert r.status == status, data
            return data

    assert "mapping.prompt" in (await refused({"mapping": {"seed": {"node": "3", "input": "seed"}}}))["details"]
    assert "'77'" in (await refused({"mapping": {"prompt": {"node": "77", "input": "text"}}}))["details"]
    data = await refused({"mapping": {"prompt": {"node": "6", "input": "clip"}}})
    assert "is a link" in data["details"]
    data = await refused({"mapping": {"prompt": {"node": "6", "input": "text"}, "sampleer": []}})
    assert "mapping.sampleer" in [f["path"] for f in data["fields"]]
    data = await refused({"mapping": {"prompt": {"node": "6"}}})
    assert data["fields"][0]["path"].startswith("mapping.prompt")
    ui = {"nodes": [{"id": 1, "type": "KSampler"}], "links": [], "version": 0.4}
    async with admin.post("/api/workflows", json={"name": "ui", "graph": ui}) as r:
        data = await r.json()
        assert r.status == 400 and "UI-format" in data["details"]
    no_sampler = {"9": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}
    async with admin.post("/api/workflows", json={"name": "no prompt", "graph": no_sampler}) as r:
        data = await r.json()
        assert r.status == 400 and "give a mapping" in data["details"]


async def test_generate_with_a_stored_workflow(tmp_path):
    async with rig(tmp_path) as r:
        graph = renumbered()
        mapping = {"prompt": {"node": "20", "input": "text"}, "seed": {"node": "12", "input": "seed"},
                   "steps": {"node": "12", "input": "steps"}}
        async with r.api.post("/api/workflows", json={"name": "fixed", "graph": graph, "mapping": mapping}) as resp:
            wid = (await resp.json())["id"]
        data = await r.generate(body={"prompt": "from a stored workflow", "workflowId": wid,
                                      "parameters": {"steps": 2, "seed": -1}})
        g = await r.final(data["generationId"])
        assert g["status"] == "completed" and g["workflowId"] == wid and len(g["imageUrls"]) == 1
        assert g["parameters"] == {"seed": g["seed"], "steps": 2}
        ran = r.sim.history[g["queueId"]]["prompt"][2]
        assert ran["20"]["inputs"]["text"] == "from a stored workflow"
        assert ran["12"]["inputs"]["seed"] == g["seed"] and ran["12"]["inputs"]["steps"] == 2
        assert ran["10"]["inputs"]["ckpt_name"] == "v1-5-pruned-emaonly.safetensors"  # the graph's own, unmapped

        # A parameter the workflow does not map is refused, not silently dropped.
        for body, field in [({"parameters": {"sampler": "euler"}}, "parameters.sampler"),
                            ({"parameters": {"width": 64}}, "parameters.width"),
                            ({"negativePrompt": "ugly"}, "negativePrompt")]:
            async with r.api.post(f"/api/comfy/{r.sid}/generate",
                                  json={"prompt": "x", "workflowId": wid, **body}) as resp:
                data = await resp.json()
                assert resp.status == 400 and data["details"].startswith(field), data

        # Deleting the workflow keeps the generation (its workflowId is cleared).
        async with r.api.delete(f"/api/workflows/{wid}") as resp:
            assert resp.status == 200
        assert (await r.generation(g["id"]))["workflowId"] is None


def test_builtin_graph_is_valid_and_fully_mapped():
    validate_graph(BUILTIN_GRAPH)
    validate_mapping(BUILTIN_GRAPH, BUILTIN_MAPPING)
    assert set(BUILTIN_MAPPING) == {"prompt", "negativePrompt", "width", "height", "steps", "cfg_scale", "sampler",
                                    "scheduler", "seed", "checkpoint", "batchSize"}
    classes = sorted(n["class_type"] for n in BUILTIN_GRAPH.values())
    assert classes == sorted(["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage",
                              "KSampler", "VAEDecode", "SaveImage"])
    assert infer_mapping(BUILTIN_GRAPH) == BUILTIN_MAPPING


def test_a1111_names():
    assert ("euler_ancestral", None) in sampler_candidates("euler_a")
    assert ("euler_ancestral", None) in sampler_candidates("Euler a")
    assert ("dpmpp_2m", "karras") in sampler_candidates("DPM++ 2M Karras")
    assert ("dpmpp_2m_sde", "karras") in sampler_candidates("dpmpp_2m_sde_karras")
    assert ("uni_pc", None) in sampler_candidates("UniPC")
    assert sampler_candidates("euler_ancestral")[0] == ("euler_ancestral", None)
    assert "normal" in scheduler_candidates("Automatic")
    assert "sgm_uniform" in scheduler_candidates("SGM Uniform")
    with pytest.raises(BadRequest):
        validate_graph({})
