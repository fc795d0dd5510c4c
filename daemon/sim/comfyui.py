"""A faithful fake ComfyUI 0.3.64 server (reference: comfyui-api.md, §12 in particular).

Real aiohttp server on loopback: the HTTP routes of §2 (also under `/api`), the 400
bodies of `POST /prompt` (§3), history entries (§4), the websocket protocol with its
exact message order and per-client routing (§5), queue/interrupt semantics (§6), model
folders listed from a real directory (§8) and `SaveImage` writing real PNGs whose
pixels depend on the prompt text and seed. Nodes with identical inputs are served
from a cache, as in ComfyUI.

Usage in a test::

    async with ComfySim(step_time=0.01) as sim:
        client = ComfyClient(sim.base_url, session=session, client_id="me")
        ...

Knobs (change them at runtime): `step_time`, `preview`, `start_delay` (+ `start_mode`
"502" or "refuse"), `accept_websockets`, `fail_next_execution()`, `drop_websockets()`,
`drop_next_response()`, `kill()`, `restart()`. Options that emulate a proxy in front of ComfyUI on a rented
box: `path_prefix`, `basic_auth`, `bearer_token`.

Standalone: `python -m socialsync.daemon.sim.comfyui [--host H] [--port P] [--models-dir DIR]`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import hashlib
import heapq
import ipaddress
import itertools
import json
import logging
import mimetypes
import os
import random
import shutil
import signal
import socket
import string
import struct
import sys
import tempfile
import time
import traceback
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiohttp import WSMsgType, web

from socialsync.daemon.events.hub import text_frame
from socialsync.daemon.sim import png

__all__ = [
    "MODEL_FOLDERS",
    "SAMPLERS",
    "SCHEDULERS",
    "ComfySim",
    "main",
    "txt2img_graph",
]

log = logging.getLogger(__name__)

VERSION = "0.3.64"
MAX_RESOLUTION = 16384
MAX_UPLOAD_SIZE = 100 * 1024 * 1024
HISTORY_MAX = 10000
VRAM_TOTAL = 24 * 1024**3

SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis",
    "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp",
    "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]  # fmt: skip
SCHEDULERS = [
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
    "linear_quadratic", "kl_optimal",
]  # fmt: skip

MODEL_FOLDERS = [
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
    "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
    "upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers",
    "model_patches", "audio_encoders",
]  # fmt: skip
MODEL_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})
# Extra directories a folder scans (legacy names); `output/<name>` for model-saving nodes.
_LEGACY_DIRS = {"text_encoders": ["clip"], "diffusion_models": ["unet"], "controlnet": ["t2i_adapter"]}
_OUTPUT_SCANNED = {"checkpoints", "loras", "vae", "text_encoders", "diffusion_models"}
SEED_MODELS = {
    "checkpoints": ["sd_xl_base_1.0.safetensors", "v1-5-pruned-emaonly.safetensors"],
    "loras": ["detail_tweaker_xl.safetensors"],
    "vae": ["sdxl_vae.safetensors"],
}
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD_SIZE}

_500_TEXT = "500 Internal Server Error\n\nServer got itself in trouble"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int | float)
        and not isinstance(value[1], bool)
    )


def txt2img_graph(
    *,
    ckpt: str = "sd_xl_base_1.0.safetensors",
    positive: str = "a lighthouse at dawn",
    negative: str = "blurry",
    seed: int = 1,
    steps: int = 4,
    cfg: float = 7.0,
    sampler_name: str = "euler",
    scheduler: str = "normal",
    denoise: float = 1.0,
    width: int = 64,
    height: int = 64,
    batch_size: int = 1,
    filename_prefix: str = "ComfyUI",
) -> dict[str, Any]:
    """The standard API-format txt2img graph of reference §9 (node ids 3-9)."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch_size}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["4", 1]}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": sampler_name,
                "scheduler": scheduler,
                "denoise": denoise,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": filename_prefix}},
    }


# --------------------------------------------------------------------------- nodes

Lists = dict[str, list[str]]  # "checkpoints", "loras", "vae", "input_images" -> names


class _Interrupted(Exception):
    pass


class _InjectedFailure(RuntimeError):
    pass


@dataclass
class _Ctx:
    """What a running node sees."""

    sim: ComfySim
    run: _Run
    node_id: str


@dataclass(frozen=True)
class _NodeDef:
    name: str
    display_name: str
    category: str
    description: str
    input_types: Callable[[Lists], dict[str, Any]]
    return_types: tuple[str, ...]
    run: Callable[[_Ctx, dict[str, Any]], Awaitable[tuple[tuple[Any, ...], dict[str, Any] | None]]]
    return_names: tuple[str, ...] | None = None
    output_node: bool = False
    output_tooltips: tuple[str, ...] | None = None
    # VALIDATE_INPUTS: the inputs it takes over, and the check (True or an error string)
    custom_validated: tuple[str, ...] = ()
    custom_validate: Callable[[ComfySim, dict[str, Any]], bool | str] | None = None
    fingerprint: Callable[[ComfySim, dict[str, Any]], str | None] | None = None  # IS_CHANGED

    def info(self, lists: Lists) -> dict[str, Any]:
        types = self.input_types(lists)
        info: dict[str, Any] = {
            "input": types,
            "input_order": {key: list(value) for key, value in types.items()},
            "output": list(self.return_types),
            "output_is_list": [False] * len(self.return_types),
            "output_name": list(self.return_names or self.return_types),
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": "nodes",
            "category": self.category,
            "output_node": self.output_node,
        }
        if self.output_tooltips:
            info["output_tooltips"] = list(self.output_tooltips)
        return info


def _int(default: int, lo: int, hi: int, step: int | None = None, **extra: Any) -> list[Any]:
    opts: dict[str, Any] = {"default": default, "min": lo, "max": hi}
    if step is not None:
        opts["step"] = step
    opts.update(extra)
    return ["INT", opts]


def _float(default: float, lo: float, hi: float, step: float, **extra: Any) -> list[Any]:
    return ["FLOAT", {"default": default, "min": lo, "max": hi, "step": step, **extra}]


_HIDDEN_PNG = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


async def _run_checkpoint(ctx: _Ctx, i: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    name = i["ckpt_name"]
    return (
        {"type": "MODEL", "material": _digest("model", name)},
        {"type": "CLIP", "material": _digest("clip", name)},
        {"type": "VAE", "material": _digest("vae", name)},
    ), None


async def _run_lora(ctx: _Ctx, i: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    key = (i["lora_name"], i["strength_model"], i["strength_clip"])
    return (
        {"type": "MODEL", "material": _digest("lora-model", i["model"]["material"], key)},
        {"type": "CLIP", "material": _digest("lora-clip", i["clip"]["material"], key)},
    ), None


async def _run_vae_loader(ctx: _Ctx, i: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    return ({"type": "VAE", "material": _digest("vae-file", i["vae_name"])},), None


async def _run_clip_encode(ctx: _Ctx, i: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    return ({"type": "CONDITIONING", "text": i["text"], "material": _digest("cond", i["clip"]["material"], i["text"])},), None


async def _run_empty_latent(ctx: _Ctx, i: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    # The latent is width//8 x height//8; the decoded image is 8x that (step not enforced).
    w, h, b = (i["width"] // 8) * 8, (i["height"] // 8) * 8, i["batch_size"]
    return ({"type": "LATENT", "w": w, "h": h, "batch": b, "material": _digest("empty", w, h, b)},), None


async def _run_ksampler(ctx: _Ctx, i: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    latent = i["latent_image"]
    steps = int(i["steps"])
    material = _digest(
        "ksampler",
        i["model"]["material"],
        i["positive"]["material"],
        i["negative"]["material"],
        latent["material"],
        i["seed"],
        steps,
        i["cfg"],
        i["sampler_name"],
        i["scheduler"],
        i["denoise"],
    )
    for step in range(1, steps + 1):
        await ctx.sim._sampler_step(ctx.run)
        await ctx.sim._progress(ctx.run, ctx.node_id, step, steps, material)
    return ({**latent, "material": material},), None


async def _run_vae_decode(ctx: _Ctx, i: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    s = i["samples"]
    material = _digest("decode", s["material"], i["vae"]["material"])
    return ({"type": "IMAGE", "render": "noise", "w": s["w"], "h": s["h"], "batch": s["batch"], "material": material},), None


async def _run_vae_encode(ctx: _Ctx, i: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    p = i["pixels"]
    w, h = (p["w"] // 8) * 8, (p["h"] // 8) * 8
    return ({"type": "LATENT", "w": w, "h": h, "batch": p["batch"],
             "material": _digest("encode", p["material"], i["vae"]["material"])},), None  # fmt: skip


async def _run_empty_image(ctx: _Ctx, i: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    w, h, b, c = i["width"], i["height"], i["batch_size"], i["color"]
    return ({"type": "IMAGE", "render": "solid", "color": c, "w": w, "h": h, "batch": b,
             "material": _digest("solid", w, h, b, c)},), None  # fmt: skip


async def _run_load_image(ctx: _Ctx, i: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    path = ctx.sim._input_path(i["image"])
    data = await asyncio.to_thread(path.read_bytes)
    w, h = await asyncio.to_thread(png.image_size, path)
    image = {"type": "IMAGE", "render": "file", "path": str(path), "w": w, "h": h, "batch": 1,
             "material": hashlib.sha256(data).hexdigest()}  # fmt: skip
    return (image, {"type": "MASK", "w": w, "h": h}), None


async def _run_save_image(ctx: _Ctx, i: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (), await ctx.sim._save_images(ctx.run, i["images"], i["filename_prefix"], temp=False)


async def _run_preview_image(ctx: _Ctx, i: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(5))
    return (), await ctx.sim._save_images(ctx.run, i["images"], f"ComfyUI_temp_{suffix}", temp=True)


def _validate_load_image(sim: ComfySim, i: dict[str, Any]) -> bool | str:
    image = i.get("image")
    if not isinstance(image, str) or not sim._input_path(image).exists():
        return f"Invalid image file: {image}"
    return True


def _fingerprint_load_image(sim: ComfySim, i: dict[str, Any]) -> str | None:
    try:
        return hashlib.sha256(sim._input_path(str(i.get("image"))).read_bytes()).hexdigest()
    except OSError:
        return None


NODES: dict[str, _NodeDef] = {
    n.name: n
    for n in [
        _NodeDef(
            "CheckpointLoaderSimple", "Load Checkpoint", "loaders",
            "Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
            lambda L: {"required": {"ckpt_name": [L["checkpoints"], {"tooltip": "The name of the checkpoint (model) to load."}]}},
            ("MODEL", "CLIP", "VAE"), _run_checkpoint,
            output_tooltips=(
                "The model used for denoising latents.",
                "The CLIP model used for encoding text prompts.",
                "The VAE model used for encoding and decoding images to and from latent space.",
            ),
        ),
        _NodeDef(
            "LoraLoader", "Load LoRA", "loaders",
            "LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are denoised such as applying styles.",
            lambda L: {"required": {
                "model": ["MODEL", {"tooltip": "The diffusion model the LoRA will be applied to."}],
                "clip": ["CLIP", {"tooltip": "The CLIP model the LoRA will be applied to."}],
                "lora_name": [L["loras"], {"tooltip": "The name of the LoRA."}],
                "strength_model": _float(1.0, -100.0, 100.0, 0.01),
                "strength_clip": _float(1.0, -100.0, 100.0, 0.01),
            }},
            ("MODEL", "CLIP"), _run_lora,
        ),
        _NodeDef(
            "VAELoader", "Load VAE", "loaders", "",
            lambda L: {"required": {"vae_name": [L["vae"]]}},
            ("VAE",), _run_vae_loader,
        ),
        _NodeDef(
            "CLIPTextEncode", "CLIP Text Encode (Prompt)", "conditioning",
            "Encodes a text prompt using a CLIP model into an embedding that can be used to guide the diffusion model towards generating specific images.",
            lambda L: {"required": {
                "text": ["STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": "The text to be encoded."}],
                "clip": ["CLIP", {"tooltip": "The CLIP model used for encoding the text."}],
            }},
            ("CONDITIONING",), _run_clip_encode,
        ),
        _NodeDef(
            "EmptyLatentImage", "Empty Latent Image", "latent",
            "Create a new batch of empty latent images to be denoised via sampling.",
            lambda L: {"required": {
                "width": _int(512, 16, MAX_RESOLUTION, 8, tooltip="The width of the latent images in pixels."),
                "height": _int(512, 16, MAX_RESOLUTION, 8, tooltip="The height of the latent images in pixels."),
                "batch_size": _int(1, 1, 4096, tooltip="The number of latent images in the batch."),
            }},
            ("LATENT",), _run_empty_latent,
        ),
        _NodeDef(
            "KSampler", "KSampler", "sampling",
            "Uses the provided model, positive and negative conditioning to denoise the latent image.",
            lambda L: {"required": {
                "model": ["MODEL", {"tooltip": "The model used for denoising the input latent."}],
                "seed": _int(0, 0, 0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="The random seed used for creating the noise."),
                "steps": _int(20, 1, 10000, tooltip="The number of steps used in the denoising process."),
                "cfg": _float(8.0, 0.0, 100.0, 0.1, round=0.01),
                "sampler_name": [SAMPLERS, {"tooltip": "The algorithm used when sampling."}],
                "scheduler": [SCHEDULERS, {"tooltip": "The scheduler controls how noise is gradually removed."}],
                "positive": ["CONDITIONING", {}],
                "negative": ["CONDITIONING", {}],
                "latent_image": ["LATENT", {"tooltip": "The latent image to denoise."}],
                "denoise": _float(1.0, 0.0, 1.0, 0.01),
            }},
            ("LATENT",), _run_ksampler,
            output_tooltips=("The denoised latent.",),
        ),
        _NodeDef(
            "VAEDecode", "VAE Decode", "latent",
            "Decodes latent images back into pixel space images.",
            lambda L: {"required": {
                "samples": ["LATENT", {"tooltip": "The latent to be decoded."}],
                "vae": ["VAE", {"tooltip": "The VAE model used for decoding the latent."}],
            }},
            ("IMAGE",), _run_vae_decode,
            output_tooltips=("The decoded image.",),
        ),
        _NodeDef(
            "VAEEncode", "VAE Encode", "latent", "",
            lambda L: {"required": {"pixels": ["IMAGE"], "vae": ["VAE"]}},
            ("LATENT",), _run_vae_encode,
        ),
        _NodeDef(
            "SaveImage", "Save Image", "image", "Saves the input images to your ComfyUI output directory.",
            lambda L: {
                "required": {
                    "images": ["IMAGE", {"tooltip": "The images to save."}],
                    "filename_prefix": ["STRING", {"default": "ComfyUI", "tooltip": "The prefix for the file to save."}],
                },
                "hidden": dict(_HIDDEN_PNG),
            },
            (), _run_save_image, output_node=True,
        ),
        _NodeDef(
            "PreviewImage", "Preview Image", "image", "Saves the input images to your ComfyUI output directory.",
            lambda L: {"required": {"images": ["IMAGE"]}, "hidden": dict(_HIDDEN_PNG)},
            (), _run_preview_image, output_node=True,
        ),
        _NodeDef(
            "EmptyImage", "EmptyImage", "image", "",
            lambda L: {"required": {
                "width": _int(512, 1, MAX_RESOLUTION, 1),
                "height": _int(512, 1, MAX_RESOLUTION, 1),
                "batch_size": _int(1, 1, 4096),
                "color": _int(0, 0, 0xFFFFFF, 1, display="color"),
            }},
            ("IMAGE",), _run_empty_image,
        ),
        _NodeDef(
            "LoadImage", "Load Image", "image", "",
            lambda L: {"required": {"image": [L["input_images"], {"image_upload": True}]}},
            ("IMAGE", "MASK"), _run_load_image,
            custom_validated=("image",), custom_validate=_validate_load_image,
            fingerprint=_fingerprint_load_image,
        ),
    ]
}  # fmt: skip


# ---------------------------------------------------------------------- validation


def _input_info(types: dict[str, Any], name: str) -> tuple[Any, str | None, dict[str, Any]]:
    for category in ("required", "optional", "hidden"):
        spec = types.get(category, {}).get(name)
        if spec is None:
            continue
        if isinstance(spec, str):
            return spec, category, {}
        input_type = spec[0]
        extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        return input_type, category, extra
    return None, None, {}


def _types_match(received: Any, wanted: Any) -> bool:
    if received == wanted:
        return True
    if not isinstance(received, str) or not isinstance(wanted, str):
        return False
    if received == "*" or wanted == "*":
        return True
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in wanted.split(",")}
    return bool(got & want)


class _Validator:
    """Port of ComfyUI's `validate_prompt` / `validate_inputs` (execution.py, 0.3.64)."""

    def __init__(self, sim: ComfySim, prompt: dict[str, Any], lists: Lists) -> None:
        self.sim = sim
        self.prompt = prompt
        self.lists = lists
        self.validated: dict[str, tuple[bool, list[dict[str, Any]], str]] = {}
        self.visiting: set[str] = set()

    def run(self, partial: list[str] | None) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
        prompt = self.prompt
        outputs: list[str] = []
        for x in prompt:
            node = prompt[x]
            if not isinstance(node, dict) or "class_type" not in node:
                return False, {
                    "type": "invalid_prompt",
                    "message": "Cannot execute because a node is missing the class_type property.",
                    "details": f"Node ID '#{x}'",
                    "extra_info": {},
                }, [], {}
            class_type = node["class_type"]
            nd = NODES.get(class_type) if isinstance(class_type, str) else None
            if nd is None:
                return False, {
                    "type": "invalid_prompt",
                    "message": f"Cannot execute because node {class_type} does not exist.",
                    "details": f"Node ID '#{x}'",
                    "extra_info": {},
                }, [], {}
            if nd.output_node and (partial is None or x in partial):
                outputs.append(x)
        if not outputs:
            return False, {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "",
                           "extra_info": {}}, [], {}  # fmt: skip

        good: list[str] = []
        errors: list[tuple[str, list[dict[str, Any]]]] = []
        node_errors: dict[str, Any] = {}
        for o in outputs:
            try:
                valid, reasons, _ = self.validate_inputs(o)
            except Exception as ex:
                valid = False
                reasons = [{
                    "type": "exception_during_validation",
                    "message": "Exception when validating node",
                    "details": str(ex),
                    "extra_info": {"exception_type": type(ex).__name__,
                                   "traceback": traceback.format_tb(ex.__traceback__)},
                }]  # fmt: skip
                self.validated[o] = (False, reasons, o)
            if valid:
                good.append(o)
                continue
            errors.append((o, reasons))
            for node_id, (ok, node_reasons, _) in self.validated.items():
                # Downstream nodes of a broken one are invalid without reasons: not reported.
                if not ok and node_reasons:
                    if node_id not in node_errors:
                        node_errors[node_id] = {
                            "errors": node_reasons,
                            "dependent_outputs": [],
                            "class_type": prompt[node_id]["class_type"],
                        }
                    node_errors[node_id]["dependent_outputs"].append(o)
        if not good:
            details = "\n".join(f"{e['message']}: {e['details']}" for _, reasons in errors for e in reasons)
            return False, {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                           "details": details, "extra_info": {}}, [], node_errors  # fmt: skip
        return True, None, good, node_errors

    def validate_inputs(self, unique_id: str) -> tuple[bool, list[dict[str, Any]], str]:
        if unique_id in self.validated:
            return self.validated[unique_id]
        if unique_id in self.visiting:
            raise RecursionError("maximum recursion depth exceeded (dependency cycle)")
        self.visiting.add(unique_id)
        node = self.prompt[unique_id]  # KeyError for a link to a missing node, as in ComfyUI
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            inputs = node["inputs"] = {}
        nd = NODES[node["class_type"]]
        types = nd.input_types(self.lists)
        valid_inputs = list(types.get("required", {})) + list(types.get("optional", {}))
        errors: list[dict[str, Any]] = []
        valid = True
        for x in valid_inputs:
            input_type, category, extra = _input_info(types, x)
            info = [input_type, extra]
            if x not in inputs:
                if category == "required":
                    errors.append({"type": "required_input_missing", "message": "Required input is missing",
                                   "details": f"{x}", "extra_info": {"input_name": x}})  # fmt: skip
                continue
            val = inputs[x]
            if isinstance(val, list):
                if len(val) != 2:
                    errors.append({
                        "type": "bad_linked_input",
                        "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                        "details": f"{x}",
                        "extra_info": {"input_name": x, "input_config": info, "received_value": val},
                    })
                    continue
                o_id = val[0]
                o_class = self.prompt[o_id]["class_type"]
                received_type = NODES[o_class].return_types[val[1]]
                if not _types_match(received_type, input_type):
                    errors.append({
                        "type": "return_type_mismatch",
                        "message": "Return type mismatch between linked nodes",
                        "details": f"{x}, received_type({received_type}) mismatch input_type({input_type})",
                        "extra_info": {"input_name": x, "input_config": info, "received_type": received_type,
                                       "linked_node": val},
                    })  # fmt: skip
                    continue
                try:
                    ok, _, _ = self.validate_inputs(o_id)
                except RecursionError:
                    raise
                except Exception as ex:
                    valid = False
                    self.validated[o_id] = (False, [{
                        "type": "exception_during_inner_validation",
                        "message": "Exception when validating inner node",
                        "details": str(ex),
                        "extra_info": {"input_name": x, "input_config": info, "exception_message": str(ex),
                                       "exception_type": type(ex).__name__,
                                       "traceback": traceback.format_tb(ex.__traceback__), "linked_node": val},
                    }], o_id)  # fmt: skip
                    continue
                if not ok:
                    valid = False
                continue
            try:
                if isinstance(val, dict) and "__value__" in val:
                    val = val["__value__"]
                    inputs[x] = val
                if input_type == "INT":
                    val = int(val)
                elif input_type == "FLOAT":
                    val = float(val)
                elif input_type == "STRING":
                    val = str(val)
                elif input_type == "BOOLEAN":
                    val = bool(val)
                inputs[x] = val
            except Exception as ex:
                errors.append({
                    "type": "invalid_input_type",
                    "message": f"Failed to convert an input value to a {input_type} value",
                    "details": f"{x}, {val}, {ex}",
                    "extra_info": {"input_name": x, "input_config": info, "received_value": val,
                                   "exception_message": str(ex)},
                })  # fmt: skip
                continue
            if x in nd.custom_validated:
                continue
            if "min" in extra and val < extra["min"]:
                errors.append({"type": "value_smaller_than_min",
                               "message": f"Value {val} smaller than min of {extra['min']}", "details": f"{x}",
                               "extra_info": {"input_name": x, "input_config": info, "received_value": val}})
                continue  # fmt: skip
            if "max" in extra and val > extra["max"]:
                errors.append({"type": "value_bigger_than_max",
                               "message": f"Value {val} bigger than max of {extra['max']}", "details": f"{x}",
                               "extra_info": {"input_name": x, "input_config": info, "received_value": val}})
                continue  # fmt: skip
            if isinstance(input_type, list) and val not in input_type:
                input_config: Any = info
                if len(input_type) > 20:
                    list_info = f"(list of length {len(input_type)})"
                    input_config = None
                else:
                    list_info = str(input_type)
                errors.append({
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": f"{x}: '{val}' not in {list_info}",
                    "extra_info": {"input_name": x, "input_config": input_config, "received_value": val},
                })
                continue
        if nd.custom_validate is not None:
            args = {k: inputs.get(k) for k in nd.custom_validated}
            ret = nd.custom_validate(self.sim, args)
            if ret is not True:
                x = nd.custom_validated[-1]
                errors.append({
                    "type": "custom_validation_failed",
                    "message": "Custom validation failed for node",
                    "details": f"{nd.name} - {ret}" if isinstance(ret, str) else nd.name,
                    "extra_info": {"input_name": x, "input_config": None, "received_value": inputs.get(x)},
                })
        self.visiting.discard(unique_id)
        result = (not errors and valid, errors, unique_id)
        self.validated[unique_id] = result
        return result


# ----------------------------------------------------------------------- execution


class _ExecutionList:
    """ComfyUI's execution order (comfy_execution/graph.py): stack-based staging plus the
    "UX friendly" pick that prefers output nodes and their near ancestors."""

    def __init__(self, graph: dict[str, Any], cached: set[str]) -> None:
        self.graph = graph
        self.cached = cached
        self.pending: dict[str, None] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, None]] = {}

    def _is_output(self, node_id: str) -> bool:
        return NODES[self.graph[node_id]["class_type"]].output_node

    def add_node(self, node_id: str) -> None:
        stack = [node_id]
        links: list[tuple[str, str]] = []
        while stack:
            uid = stack.pop()
            if uid in self.pending:
                continue
            self.pending[uid] = None
            self.block_count[uid] = 0
            self.blocking[uid] = {}
            for value in self.graph[uid]["inputs"].values():
                if is_link(value):
                    src = value[0]
                    if src not in self.cached:
                        stack.append(src)
                    links.append((src, uid))
        for src, dst in links:
            if src not in self.cached:
                self.add_node(src)
                if dst not in self.blocking[src]:
                    self.blocking[src][dst] = None
                    self.block_count[dst] += 1

    def pick(self) -> str | None:
        ready = [n for n in self.pending if self.block_count[n] == 0]
        if not ready:
            if self.pending:
                raise RuntimeError("Dependency cycle detected")
            return None
        for n in ready:
            if self._is_output(n):
                return n
        for n in ready:
            if any(self._is_output(b) for b in self.blocking[n]):
                return n
        for n in ready:
            if any(self._is_output(b1) for b in self.blocking[n] for b1 in self.blocking.get(b, {})):
                return n
        return ready[0]

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        for dst in self.blocking.pop(node_id):
            self.block_count[dst] -= 1


@dataclass(order=True)
class _Entry:
    number: float
    prompt_id: str
    seq: int
    item: list[Any] = field(compare=False)  # [number, prompt_id, graph, extra_data, outputs]


@dataclass
class _Run:
    """State of the prompt being executed."""

    entry: _Entry
    client_id: str | None
    messages: list[list[Any]] = field(default_factory=list)
    nodes_state: dict[str, dict[str, Any]] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)

    @property
    def prompt_id(self) -> str:
        return self.entry.prompt_id


@dataclass
class _CacheEntry:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None


WS_WRITE_HIGH_WATER = 64 * 1024  # past it, messages wait for room (aiohttp's send_str)


class _WsClient:
    """One websocket with its own ordered writer (a slow reader never blocks the worker)."""

    def __init__(self, sid: str, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None) -> None:
        self.sid = sid
        self.ws = ws
        self.transport = transport
        self.flags: dict[str, Any] = {}
        self._queue: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._writer(), name=f"comfysim-ws-{sid}")

    @property
    def wants_metadata_previews(self) -> bool:
        return bool(self.flags.get("supports_preview_metadata"))

    def put(self, message: str | bytes) -> None:
        self._queue.put_nowait(message)

    async def _writer(self) -> None:
        # The frames on the wire are ComfyUI's, one message per frame; only the syscalls
        # differ: text messages queued together (a prompt's burst of events) go out in
        # one transport write of their frames, as long as the connection is uncompressed
        # and has room. Anything else takes aiohttp's path, which waits for room.
        transport = self.transport if not self.ws.compress else None
        queue = self._queue
        try:
            message = await queue.get()
            while message is not None:
                taken: tuple[str | bytes | None] | None = None  # the next message, already dequeued
                if isinstance(message, bytes):
                    await self.ws.send_bytes(message)
                elif transport is None or transport.is_closing() \
                        or transport.get_write_buffer_size() > WS_WRITE_HIGH_WATER:
                    await self.ws.send_str(message)
                else:
                    frames = [text_frame(message.encode())]
                    while not queue.empty():
                        item = queue.get_nowait()
                        if not isinstance(item, str):
                            taken = (item,)
                            break
                        frames.append(text_frame(item.encode()))
                    transport.write(b"".join(frames))
                message = taken[0] if taken is not None else await queue.get()
        except Exception as exc:  # the peer went away; the reader side cleans up
            log.debug("ws writer stopped sid=%s: %r", self.sid, exc)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


# --------------------------------------------------------------------------- server


class ComfySim:
    """The fake ComfyUI server. See the module docstring."""

    def __init__(
        self,
        models_dir: Path | str | None = None,
        *,
        step_time: float = 0.05,
        preview: bool = False,
        preview_size: int = 64,
        start_delay: float = 0.0,
        start_mode: Literal["502", "refuse"] = "502",
        base_dir: Path | str | None = None,
        seed_models: bool | None = None,
        path_prefix: str = "",
        basic_auth: tuple[str, str] | None = None,
        bearer_token: str | None = None,
        cors_origin: str | None = None,
        history_max: int = HISTORY_MAX,
    ) -> None:
        self.step_time = step_time
        self.preview = preview
        self.preview_size = preview_size
        self.start_delay = start_delay
        self.start_mode = start_mode
        self.accept_websockets = True
        self.history_max = history_max
        self.path_prefix = "/" + path_prefix.strip("/") if path_prefix.strip("/") else ""
        self.basic_auth = basic_auth
        self.bearer_token = bearer_token
        self.cors_origin = cors_origin

        self._own_base = base_dir is None
        self._base_dir = Path(base_dir) if base_dir is not None else Path(tempfile.mkdtemp(prefix="comfysim-"))
        self.models_dir = Path(models_dir) if models_dir is not None else self._base_dir / "models"
        self.output_dir = self._base_dir / "output"
        self.input_dir = self._base_dir / "input"
        self.temp_dir = self._base_dir / "temp"
        self._seed_models = seed_models

        self.host = "127.0.0.1"
        self.port = 0
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._ready_at = 0.0
        self._fail_next: dict[str, Any] | None = None
        self._drop_responses: dict[str, int] = {}
        self._reset_state()

    # ------------------------------------------------------------------ state

    def _reset_state(self) -> None:
        """What a ComfyUI process keeps in memory (lost on restart)."""
        self._counter = 0
        self._seq = itertools.count()
        self._heap: list[_Entry] = []
        self._running: _Run | None = None
        self._history: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cache: dict[str, _CacheEntry] = {}
        self._clients: dict[str, _WsClient] = {}
        self._all_ws: set[_WsClient] = set()
        self._wake = asyncio.Event()
        self._interrupt = asyncio.Event()
        self._last_node_id: str | None = None

    @property
    def queue_remaining(self) -> int:
        return len(self._heap) + (1 if self._running is not None else 0)

    @property
    def running_prompt_id(self) -> str | None:
        return self._running.prompt_id if self._running is not None else None

    @property
    def pending_prompt_ids(self) -> list[str]:
        return [e.prompt_id for e in sorted(self._heap)]

    @property
    def history(self) -> dict[str, Any]:
        """A copy of the in-memory history (oldest first)."""
        return copy.deepcopy(dict(self._history))

    @property
    def client_ids(self) -> list[str]:
        return list(self._clients)

    @property
    def ready(self) -> bool:
        return self._runner is not None and asyncio.get_running_loop().time() >= self._ready_at

    @property
    def available_checkpoints(self) -> list[str]:
        return self._list_folder("checkpoints")

    def fail_next_execution(
        self, message: str = "CUDA error: out of memory", *, node_type: str | None = None,
        exception_type: str = "torch.OutOfMemoryError",
    ) -> None:  # fmt: skip
        """The next node that really executes (of `node_type`, default: the first KSampler,
        else the first node) raises: the prompt ends with `execution_error`."""
        self._fail_next = {"message": message, "node_type": node_type, "exception_type": exception_type}

    def drop_next_response(self, path: str, count: int = 1) -> None:
        """Handle the next `count` requests to `path` (e.g. "/prompt") normally, then reset
        the connection instead of answering: the client cannot know whether it worked."""
        self._drop_responses[path] = self._drop_responses.get(path, 0) + count

    async def drop_websockets(self) -> int:
        """Abort every websocket connection at the TCP level (no close frame)."""
        clients = list(self._all_ws)
        for client in clients:
            client.abort()
        await asyncio.sleep(0)
        return len(clients)

    # -------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> ComfySim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Bind and serve; `base_url`/`port` are set when this returns (even during `start_delay`)."""
        if self._runner is not None:
            raise RuntimeError("ComfySim already started")
        self.host = host
        await asyncio.to_thread(self._prepare_dirs)
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._interrupt = asyncio.Event()
        runner = web.AppRunner(self._make_app(), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        self._runner = runner
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.port = sock.getsockname()[1]
        url_host = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{url_host}:{self.port}{self.path_prefix}"
        self._ready_at = loop.time() + max(0.0, self.start_delay)
        if self.start_delay > 0 and self.start_mode == "refuse":
            # Bound but not listening: connections are refused until the delay passes.
            self._listen_task = asyncio.create_task(self._listen_later(sock, self.start_delay))
        else:
            await web.SockSite(runner, sock).start()
        self._worker_task = asyncio.create_task(self._worker(), name="comfysim-worker")
        log.info("ComfySim listening base_url=%s", self.base_url)

    async def _listen_later(self, sock: socket.socket, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._runner is not None:
            await web.SockSite(self._runner, sock).start()

    async def kill(self) -> None:
        """Die like a crashed process: stop listening, reset every connection, stop working."""
        runner, self._runner = self._runner, None
        for task in (self._listen_task, self._worker_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._listen_task = self._worker_task = None
        if runner is None:
            return
        for site in list(runner.sites):
            await site.stop()
        for client in list(self._all_ws):
            client.abort()
        if runner.server is not None:
            for conn in runner.server.connections:
                if conn.transport is not None:
                    conn.transport.abort()
        for client in list(self._all_ws):
            await client.close()
        await runner.cleanup()

    async def restart(self) -> None:
        """A new process on the same port: queue, history, cache and sockets are gone."""
        host, port = self.host, self.port
        await self.kill()
        self._reset_state()
        await asyncio.to_thread(shutil.rmtree, self.temp_dir, True)
        await self.start(host, port)

    async def stop(self) -> None:
        await self.kill()
        self._reset_state()
        if self._own_base:
            await asyncio.to_thread(shutil.rmtree, self._base_dir, True)

    def _prepare_dirs(self) -> None:
        for d in (self.output_dir, self.input_dir, self.temp_dir, self.models_dir):
            d.mkdir(parents=True, exist_ok=True)
        for folder in MODEL_FOLDERS:
            (self.models_dir / folder).mkdir(exist_ok=True)
        seed = self._seed_models
        if seed is None:
            seed = not any(self._list_folder("checkpoints"))
        if seed:
            for folder, names in SEED_MODELS.items():
                for name in names:
                    path = self.models_dir / folder / name
                    if not path.exists():
                        path.write_bytes(b"")

    # ------------------------------------------------------------- filesystem

    def _folder_dirs(self, folder: str) -> list[Path]:
        dirs = [self.models_dir / folder] + [self.models_dir / d for d in _LEGACY_DIRS.get(folder, [])]
        if folder in _OUTPUT_SCANNED:
            dirs.append(self.output_dir / folder)
        return dirs

    def _folder_files(self, folder: str) -> list[tuple[str, int, Path]]:
        """(relative name, path index, absolute path) of every listed file of a folder."""
        if folder == "configs":
            exts: frozenset[str] | None = frozenset({".yaml"})
        elif folder == "custom_nodes":
            exts = None
        else:
            exts = MODEL_EXTENSIONS
        found: dict[str, tuple[str, int, Path]] = {}
        for index, root in enumerate(self._folder_dirs(folder)):
            if not root.is_dir():
                continue
            for dirpath, subdirs, filenames in os.walk(root, followlinks=True):
                subdirs[:] = [d for d in subdirs if d != ".git"]
                for fname in filenames:
                    if exts is not None and os.path.splitext(fname)[1].lower() not in exts:
                        continue
                    full = Path(dirpath) / fname
                    rel = full.relative_to(root).as_posix()
                    found.setdefault(rel, (rel, index, full))
        return sorted(found.values())

    def _list_folder(self, folder: str) -> list[str]:
        return [rel for rel, _, _ in self._folder_files(folder)]

    def _input_images(self) -> list[str]:
        if not self.input_dir.is_dir():
            return []
        names = []
        for entry in self.input_dir.iterdir():
            kind = mimetypes.guess_type(entry.name)[0] or ""
            if entry.is_file() and kind.startswith("image/"):
                names.append(entry.name)
        return sorted(names)

    def _lists(self) -> Lists:
        return {
            "checkpoints": self._list_folder("checkpoints"),
            "loras": self._list_folder("loras"),
            "vae": self._list_folder("vae"),
            "input_images": self._input_images(),
        }

    def _dir_by_type(self, kind: str | None) -> Path | None:
        return {"output": self.output_dir, "input": self.input_dir, "temp": self.temp_dir}.get(kind or "")

    def _input_path(self, name: str) -> Path:
        """LoadImage's view of a name: `sub/x.png` or `x.png [output]` annotations allowed."""
        name, base = self._annotated(name)
        return (base or self.input_dir) / name

    def _annotated(self, name: str) -> tuple[str, Path | None]:
        for suffix, base in ((" [output]", self.output_dir), (" [input]", self.input_dir), (" [temp]", self.temp_dir)):
            if name.endswith(suffix.strip()):
                return name[: -len(suffix)], base
        return name, None

    # ----------------------------------------------------------------- sending

    def _send(self, event: str, data: dict[str, Any], sid: str | None) -> None:
        """ComfyUI's `send_sync`: to one client id, or broadcast when `sid` is None."""
        message = json.dumps({"type": event, "data": data})
        if sid is None:
            for client in self._clients.values():
                client.put(message)
        elif (client := self._clients.get(sid)) is not None:
            client.put(message)

    def _queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.queue_remaining}}

    def _queue_updated(self) -> None:
        self._send("status", {"status": self._queue_info()}, None)

    def _add_message(self, run: _Run, event: str, data: dict[str, Any], *, broadcast: bool) -> None:
        data = {**data, "timestamp": _now_ms()}
        run.messages.append([event, data])
        if run.client_id is not None or broadcast:
            self._send(event, data, run.client_id)

    def _node_state(self, run: _Run, node_id: str, value: float, maximum: float, state: str) -> None:
        run.nodes_state[node_id] = {
            "value": value, "max": maximum, "state": state, "node_id": node_id, "prompt_id": run.prompt_id,
            "display_node_id": node_id, "parent_node_id": None, "real_node_id": node_id,
        }  # fmt: skip
        self._send("progress_state", {"prompt_id": run.prompt_id, "nodes": run.nodes_state}, run.client_id)

    def _targets(self, sid: str | None) -> list[_WsClient]:
        if sid is None:
            return list(self._clients.values())
        client = self._clients.get(sid)
        return [client] if client is not None else []

    async def _progress(self, run: _Run, node_id: str, value: int, maximum: int, material: str) -> None:
        self._node_state(run, node_id, value, maximum, "running")
        jpeg = png.preview_jpeg(material, value, self.preview_size) if self.preview else b""
        targets = self._targets(run.client_id)
        if jpeg:
            meta = json.dumps({"node_id": node_id, "prompt_id": run.prompt_id, "display_node_id": node_id,
                               "parent_node_id": None, "real_node_id": node_id,
                               "image_type": "image/jpeg"}).encode()  # fmt: skip
            frame = struct.pack(">II", 4, len(meta)) + meta + jpeg
            for client in targets:
                if client.wants_metadata_previews:
                    client.put(frame)
        self._send("progress", {"value": value, "max": maximum, "prompt_id": run.prompt_id, "node": node_id},
                   run.client_id)  # fmt: skip
        if jpeg:
            frame = struct.pack(">II", 1, 1) + jpeg
            for client in targets:
                if not client.wants_metadata_previews:
                    client.put(frame)

    # ---------------------------------------------------------------- worker

    def _enqueue(self, item: list[Any]) -> None:
        heapq.heappush(self._heap, _Entry(item[0], item[1], next(self._seq), item))
        self._queue_updated()
        self._wake.set()

    async def _worker(self) -> None:
        while True:
            while not self._heap:
                self._wake.clear()
                await self._wake.wait()
            entry = heapq.heappop(self._heap)
            extra = entry.item[3]
            client_id = extra.get("client_id") if isinstance(extra.get("client_id"), str) else None
            run = _Run(entry, client_id)
            self._running = run
            self._queue_updated()  # the second `status`: running still counts
            try:
                status_str, completed, ui_outputs, meta = await self._execute(run)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in the simulator must not stop the queue
                log.exception("simulator execution crashed prompt_id=%s", run.prompt_id)
                status_str, completed, ui_outputs, meta = "error", False, {}, {}
            while len(self._history) >= self.history_max:
                self._history.popitem(last=False)
            self._history[run.prompt_id] = {
                "prompt": entry.item,
                "outputs": ui_outputs,
                "status": {"status_str": status_str, "completed": completed, "messages": run.messages},
                "meta": meta,
            }
            self._running = None
            self._queue_updated()
            if client_id is not None:
                self._send("executing", {"node": None, "prompt_id": run.prompt_id}, client_id)

    async def _sampler_step(self, run: _Run) -> None:
        if self._interrupt.is_set():
            raise _Interrupted
        if self.step_time > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._interrupt.wait(), self.step_time)
        else:
            await asyncio.sleep(0)
        if self._interrupt.is_set():
            raise _Interrupted

    def _signatures(self, graph: dict[str, Any], fingerprints: dict[str, str | None]) -> dict[str, str]:
        memo: dict[str, str] = {}

        def sig(node_id: str) -> str:
            if node_id not in memo:
                node = graph[node_id]
                parts: list[Any] = [node["class_type"], fingerprints.get(node_id)]
                for name in sorted(node["inputs"]):
                    value = node["inputs"][name]
                    parts.append([name, ["link", sig(value[0]), value[1]] if is_link(value) else value])
                memo[node_id] = _digest(*parts)
            return memo[node_id]

        return {node_id: sig(node_id) for node_id in graph}

    async def _execute(self, run: _Run) -> tuple[str, bool, dict[str, Any], dict[str, Any]]:
        _, pid, graph, _, outputs = run.entry.item
        self._interrupt.clear()
        self._add_message(run, "execution_start", {"prompt_id": pid}, broadcast=False)
        fingerprints = await asyncio.to_thread(
            lambda: {n: NODES[v["class_type"]].fingerprint(self, v["inputs"])  # type: ignore[misc]
                     for n, v in graph.items() if NODES[v["class_type"]].fingerprint is not None}
        )  # fmt: skip
        sigs = self._signatures(graph, fingerprints)
        cached = {n for n in graph if sigs[n] in self._cache}
        self._add_message(run, "execution_cached", {"nodes": [n for n in graph if n in cached], "prompt_id": pid},
                          broadcast=False)  # fmt: skip
        values: dict[str, tuple[Any, ...]] = {n: self._cache[sigs[n]].outputs for n in cached}
        ui_outputs: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        order = _ExecutionList(graph, cached)
        for o in outputs:
            order.add_node(o)
        node_id = ""
        try:
            while (picked := order.pick()) is not None:
                node_id = picked
                class_type = graph[node_id]["class_type"]
                if node_id in cached:
                    entry = self._cache[sigs[node_id]]
                    if run.client_id is not None:
                        self._send("executed", {"node": node_id, "display_node": node_id, "output": entry.ui,
                                                "prompt_id": pid}, run.client_id)  # fmt: skip
                    if entry.ui is not None:
                        ui_outputs[node_id] = entry.ui
                        meta[node_id] = _meta(node_id)
                    self._node_state(run, node_id, 1, 1, "finished")
                else:
                    await self._run_node(run, graph, node_id, values, sigs, ui_outputs, meta)
                run.executed.append(node_id)
                order.complete(node_id)
        except _Interrupted:
            self._add_message(run, "execution_interrupted", {"prompt_id": pid, "node_id": node_id,
                              "node_type": graph[node_id]["class_type"], "executed": list(run.executed)},
                              broadcast=True)  # fmt: skip
            return self._finish_run(graph, sigs, "error", False, ui_outputs, meta)
        except Exception as ex:
            class_type = graph[node_id]["class_type"] if node_id else ""
            exc_type = getattr(ex, "sim_type", None) or (
                type(ex).__name__ if type(ex).__module__ == "builtins" else f"{type(ex).__module__}.{type(ex).__qualname__}"
            )
            current_inputs = {
                name: [f"<{name} object>"] if is_link(v) else [v]
                for name, v in (graph[node_id]["inputs"].items() if node_id else [])
            }
            self._add_message(run, "execution_error", {
                "prompt_id": pid, "node_id": node_id, "node_type": class_type, "executed": list(run.executed),
                "exception_message": str(ex), "exception_type": exc_type,
                "traceback": traceback.format_tb(ex.__traceback__), "current_inputs": current_inputs,
                "current_outputs": list(values),
            }, broadcast=False)  # fmt: skip
            return self._finish_run(graph, sigs, "error", False, ui_outputs, meta)
        self._add_message(run, "execution_success", {"prompt_id": pid}, broadcast=False)
        return self._finish_run(graph, sigs, "success", True, ui_outputs, meta)

    def _finish_run(self, graph: dict[str, Any], sigs: dict[str, str], status: str, completed: bool,
                    ui_outputs: dict[str, Any], meta: dict[str, Any]) -> tuple[str, bool, dict[str, Any], dict[str, Any]]:  # fmt: skip
        self._last_node_id = None
        keep = set(sigs.values())  # the classic cache keeps only the last prompt's nodes
        self._cache = {k: v for k, v in self._cache.items() if k in keep}
        return status, completed, ui_outputs, meta

    async def _run_node(self, run: _Run, graph: dict[str, Any], node_id: str, values: dict[str, tuple[Any, ...]],
                        sigs: dict[str, str], ui_outputs: dict[str, Any], meta: dict[str, Any]) -> None:  # fmt: skip
        node = graph[node_id]
        nd = NODES[node["class_type"]]
        self._node_state(run, node_id, 0, 1, "running")
        self._last_node_id = node_id
        if run.client_id is not None:
            self._send("executing", {"node": node_id, "display_node": node_id, "prompt_id": run.prompt_id},
                       run.client_id)  # fmt: skip
        if self._interrupt.is_set():
            raise _Interrupted
        fail = self._fail_next
        if fail is not None:
            wanted = fail["node_type"] or (
                "KSampler" if any(graph[n]["class_type"] == "KSampler" and sigs[n] not in self._cache for n in graph)
                else node["class_type"]
            )  # fmt: skip
            if node["class_type"] == wanted:
                self._fail_next = None
                err = _InjectedFailure(fail["message"])
                err.sim_type = fail["exception_type"]  # type: ignore[attr-defined]
                raise err
        inputs = {
            name: (values[value[0]][int(value[1])] if is_link(value) else value)
            for name, value in node["inputs"].items()
        }
        outs, ui = await nd.run(_Ctx(self, run, node_id), inputs)
        values[node_id] = outs
        self._cache[sigs[node_id]] = _CacheEntry(outs, ui)
        if ui is not None:
            ui_outputs[node_id] = ui
            meta[node_id] = _meta(node_id)
            if run.client_id is not None:
                self._send("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                        "prompt_id": run.prompt_id}, run.client_id)  # fmt: skip
        self._node_state(run, node_id, 1, 1, "finished")

    async def _save_images(self, run: _Run, images: dict[str, Any], prefix: str, *, temp: bool) -> dict[str, Any]:
        graph = run.entry.item[2]
        extra = run.entry.item[3]
        text = {"prompt": json.dumps(graph)}
        pnginfo = extra.get("extra_pnginfo")
        if isinstance(pnginfo, dict):
            text.update({k: json.dumps(v) for k, v in pnginfo.items()})
        out_dir = self.temp_dir if temp else self.output_dir
        return await asyncio.to_thread(
            _write_images, images, prefix, out_dir, text, "temp" if temp else "output", 1 if temp else 4
        )

    # ----------------------------------------------------------------- routes

    def _make_app(self) -> web.Application:
        sim = self

        @web.middleware
        async def faults(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            response = await handler(request)
            path = request.path[len(sim.path_prefix) :]
            path = path[4:] if path.startswith("/api/") else path
            if sim._drop_responses.get(path, 0) > 0:
                sim._drop_responses[path] -= 1
                if request.transport is not None:
                    request.transport.abort()
            return response

        @web.middleware
        async def proxy_auth(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            if sim.basic_auth is None and sim.bearer_token is None:
                return await handler(request)
            header = request.headers.get("Authorization", "")
            ok = False
            if sim.bearer_token is not None and header == f"Bearer {sim.bearer_token}":
                ok = True
            if sim.basic_auth is not None:
                expected = "Basic " + base64.b64encode(":".join(sim.basic_auth).encode()).decode()
                ok = ok or header == expected
            if not ok:
                return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="comfy"'})
            return await handler(request)

        @web.middleware
        async def starting(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            if asyncio.get_running_loop().time() < sim._ready_at:
                return web.Response(status=502, text="502 Bad Gateway")
            return await handler(request)

        @web.middleware
        async def origin_only(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            if sim.cors_origin is not None:
                response = web.Response() if request.method == "OPTIONS" else await handler(request)
                response.headers["Access-Control-Allow-Origin"] = sim.cors_origin
                response.headers["Access-Control-Allow-Methods"] = "POST, GET, DELETE, PUT, OPTIONS"
                response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
                response.headers["Access-Control-Allow-Credentials"] = "true"
                return response
            if _origin_mismatch(request.headers.get("Host"), request.headers.get("Origin")):
                return web.Response(status=403)
            if request.method == "OPTIONS":
                return web.Response()
            return await handler(request)

        app = web.Application(middlewares=[faults, proxy_auth, starting, origin_only], client_max_size=MAX_UPLOAD_SIZE)
        routes: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
            ("GET", "/ws", self._h_ws),
            ("GET", "/embeddings", self._h_embeddings),
            ("GET", "/models", self._h_model_folders),
            ("GET", "/models/{folder}", self._h_models),
            ("GET", "/extensions", self._h_extensions),
            ("POST", "/upload/image", self._h_upload_image),
            ("GET", "/view", self._h_view),
            ("GET", "/system_stats", self._h_system_stats),
            ("GET", "/features", self._h_features),
            ("GET", "/prompt", self._h_prompt_get),
            ("POST", "/prompt", self._h_prompt_post),
            ("GET", "/object_info", self._h_object_info),
            ("GET", "/object_info/{node_class}", self._h_object_info_one),
            ("GET", "/history", self._h_history),
            ("GET", "/history/{prompt_id}", self._h_history_one),
            ("POST", "/history", self._h_history_post),
            ("GET", "/queue", self._h_queue),
            ("POST", "/queue", self._h_queue_post),
            ("POST", "/interrupt", self._h_interrupt),
            ("POST", "/free", self._h_free),
            ("GET", "/experiment/models", self._h_experiment_folders),
            ("GET", "/experiment/models/{folder}", self._h_experiment_models),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, self.path_prefix + path, handler)
            app.router.add_route(method, self.path_prefix + "/api" + path, handler)
        return app

    async def _h_ws(self, request: web.Request) -> web.StreamResponse:
        if not self.accept_websockets:
            return web.Response(status=503)
        ws = web.WebSocketResponse(max_msg_size=MAX_UPLOAD_SIZE)
        transport = request.transport
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        client = _WsClient(sid, ws, transport)
        self._all_ws.add(client)
        self._clients[sid] = client  # a reconnect with the same id replaces the old socket
        client.put(json.dumps({"type": "status", "data": {"status": self._queue_info(), "sid": sid}}))
        if self._running is not None and self._running.client_id == sid and self._last_node_id is not None:
            client.put(json.dumps({"type": "executing", "data": {"node": self._last_node_id}}))
        first = True
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                    flags = data.get("data")
                    client.flags = flags if isinstance(flags, dict) else {}
                    client.put(json.dumps({"type": "feature_flags", "data": SERVER_FEATURES}))
                first = False
        finally:
            self._all_ws.discard(client)
            if self._clients.get(sid) is client:
                del self._clients[sid]
            await client.close()
        return ws

    async def _h_embeddings(self, request: web.Request) -> web.Response:
        names = await asyncio.to_thread(self._list_folder, "embeddings")
        return web.json_response([os.path.splitext(n)[0] for n in names])

    async def _h_model_folders(self, request: web.Request) -> web.Response:
        return web.json_response(MODEL_FOLDERS)

    async def _h_models(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        return web.json_response(await asyncio.to_thread(self._list_folder, folder))

    async def _h_experiment_folders(self, request: web.Request) -> web.Response:
        return web.json_response(
            [{"name": f, "folders": [str(d) for d in self._folder_dirs(f)]} for f in MODEL_FOLDERS]
        )

    async def _h_experiment_models(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)

        def listing() -> list[dict[str, Any]]:
            out = []
            for rel, index, full in self._folder_files(folder):
                st = full.stat()
                out.append({"name": rel, "pathIndex": index, "modified": st.st_mtime, "created": st.st_ctime,
                            "size": st.st_size})  # fmt: skip
            return out

        return web.json_response(await asyncio.to_thread(listing))

    async def _h_extensions(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def _h_upload_image(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        if not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        overwrite = post.get("overwrite")
        upload_type = str(post.get("type") or "input")
        upload_dir = self._dir_by_type(upload_type) or self.input_dir
        if upload_type not in ("temp", "output"):
            upload_type = "input"
        subfolder = str(post.get("subfolder", ""))
        filename = image.filename

        def save() -> web.Response:
            content = image.file.read()
            root = str(upload_dir.resolve())
            folder = os.path.join(root, os.path.normpath(subfolder))
            path = os.path.abspath(os.path.join(folder, filename))
            if os.path.commonpath((root, path)) != root:
                return web.Response(status=400)
            os.makedirs(folder, exist_ok=True)
            name = filename
            stem, ext = os.path.splitext(filename)
            duplicate = False
            if overwrite not in ("true", "1"):
                i = 1
                while os.path.exists(path):
                    with open(path, "rb") as fh:
                        if hashlib.sha256(fh.read()).digest() == hashlib.sha256(content).digest():
                            duplicate = True
                            break
                    name = f"{stem} ({i}){ext}"
                    path = os.path.join(folder, name)
                    i += 1
            if not duplicate:
                with open(path, "wb") as fh:
                    fh.write(content)
            return web.json_response({"name": name, "subfolder": subfolder, "type": upload_type})

        return await asyncio.to_thread(save)

    async def _h_view(self, request: web.Request) -> web.StreamResponse:
        resolved = await asyncio.to_thread(self._resolve_view, request.rel_url.query)
        if isinstance(resolved, int):
            return web.Response(status=resolved)
        path, filename = resolved
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        return web.FileResponse(
            path, headers={"Content-Disposition": f'filename="{filename}"', "Content-Type": content_type}
        )

    def _resolve_view(self, query: Any) -> int | tuple[str, str]:
        """Port of ComfyUI's `/view` checks: a status code, or (path, filename)."""
        if "filename" not in query:
            return 404
        filename, base = self._annotated(query["filename"])
        if not filename:
            return 400
        if filename[0] == "/" or ".." in filename:
            return 400
        if base is None:
            base = self._dir_by_type(query.get("type", "output"))
        if base is None:
            return 400
        out_dir = str(base.resolve())
        if "subfolder" in query:
            full = os.path.join(out_dir, query["subfolder"])
            if os.path.commonpath((os.path.abspath(full), out_dir)) != out_dir:
                return 403
            out_dir = full
        filename = os.path.basename(filename)
        path = os.path.join(out_dir, filename)
        if not os.path.isfile(path):
            return 404
        return path, filename

    async def _h_system_stats(self, request: web.Request) -> web.Response:
        used = 512 * 1024**2 if self._running is not None else 0
        return web.json_response({
            "system": {
                "os": "posix", "ram_total": 64 * 1024**3, "ram_free": 48 * 1024**3,
                "comfyui_version": VERSION, "required_frontend_version": "1.27.10",
                "installed_templates_version": "0.1.95", "required_templates_version": "0.1.95",
                "python_version": sys.version, "pytorch_version": "2.8.0+cu128", "embedded_python": False,
                "argv": ["main.py", "--listen", self.host, "--port", str(self.port)],
            },
            "devices": [{
                "name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync", "type": "cuda", "index": 0,
                "vram_total": VRAM_TOTAL, "vram_free": VRAM_TOTAL - 1024**3 - used,
                "torch_vram_total": 0, "torch_vram_free": 0,
            }],
        })  # fmt: skip

    async def _h_features(self, request: web.Request) -> web.Response:
        return web.json_response(SERVER_FEATURES)

    async def _h_prompt_get(self, request: web.Request) -> web.Response:
        return web.json_response(self._queue_info())

    async def _h_prompt_post(self, request: web.Request) -> web.Response:
        try:
            json_data = json.loads(await request.text())
            if isinstance(json_data, dict) and "number" in json_data:
                number: float = float(json_data["number"])
            else:
                number = self._counter
                if isinstance(json_data, dict) and json_data.get("front"):
                    number = -number
                self._counter += 1
        except (ValueError, TypeError):
            return web.Response(status=500, text=_500_TEXT)
        if not isinstance(json_data, dict) or "prompt" not in json_data:
            error = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided",
                     "extra_info": {}}  # fmt: skip
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt = json_data["prompt"]
        if not isinstance(prompt, dict):
            return web.Response(status=500, text=_500_TEXT)
        prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
        partial = json_data.get("partial_execution_targets")
        partial = [str(x) for x in partial] if isinstance(partial, list) else None

        def validate() -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
            return _Validator(self, prompt, self._lists()).run(partial)

        valid, error, outputs, node_errors = await asyncio.to_thread(validate)
        raw_extra = json_data.get("extra_data")
        extra: dict[str, Any] = dict(raw_extra) if isinstance(raw_extra, dict) else {}
        if "client_id" in json_data:
            extra["client_id"] = json_data["client_id"]
        if not valid:
            log.warning("invalid prompt: %s", error)
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        for key in SENSITIVE_EXTRA_DATA_KEYS:
            extra.pop(key, None)
        self._enqueue([number, prompt_id, prompt, extra, outputs])
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    async def _h_object_info(self, request: web.Request) -> web.Response:
        lists = await asyncio.to_thread(self._lists)
        return web.json_response({name: nd.info(lists) for name, nd in NODES.items()})

    async def _h_object_info_one(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        nd = NODES.get(name)
        if nd is None:
            return web.json_response({})
        lists = await asyncio.to_thread(self._lists)
        return web.json_response({name: nd.info(lists)})

    async def _h_history(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query["offset"]) if "offset" in query else -1
        if offset < 0 and max_items is not None:
            offset = len(self._history) - max_items
        out: dict[str, Any] = {}
        for i, (key, value) in enumerate(self._history.items()):
            if i >= offset:
                out[key] = value
                if max_items is not None and len(out) >= max_items:
                    break
        return web.json_response(out)

    async def _h_history_one(self, request: web.Request) -> web.Response:
        pid = request.match_info["prompt_id"]
        entry = self._history.get(pid)
        return web.json_response({pid: entry} if entry is not None else {})

    async def _h_history_post(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.Response(status=500, text=_500_TEXT)
        if isinstance(body, dict):
            if body.get("clear"):
                self._history.clear()
            for pid in body.get("delete") or []:
                self._history.pop(pid, None)
        return web.Response(status=200)

    async def _h_queue(self, request: web.Request) -> web.Response:
        running = [self._running.entry.item] if self._running is not None else []
        return web.json_response({"queue_running": running, "queue_pending": [e.item for e in self._heap]})

    async def _h_queue_post(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.Response(status=500, text=_500_TEXT)
        if isinstance(body, dict):
            if body.get("clear"):
                self._heap.clear()
                self._queue_updated()
            for pid in body.get("delete") or []:
                # ComfyUI's delete_queue_item: a `status` broadcast (two when it empties the
                # queue), no per-prompt event, and the prompt never reaches history.
                for i, entry in enumerate(self._heap):
                    if entry.prompt_id == pid:
                        if len(self._heap) == 1:
                            self._heap.clear()
                            self._queue_updated()
                        else:
                            self._heap.pop(i)
                            heapq.heapify(self._heap)
                        self._queue_updated()
                        break
        return web.Response(status=200)

    async def _h_interrupt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        pid = body.get("prompt_id") if isinstance(body, dict) else None
        if self._running is not None and (not pid or self._running.prompt_id == pid):
            self._interrupt.set()
        return web.Response(status=200)

    async def _h_free(self, request: web.Request) -> web.Response:
        return web.Response(status=200)


def _meta(node_id: str) -> dict[str, Any]:
    return {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin_mismatch(host: str | None, origin: str | None) -> bool:
    """ComfyUI's origin_only_middleware: 403 when a loopback Host and the Origin differ."""
    if not host or not origin:
        return False
    host_domain = host.lower()
    parsed = urllib.parse.urlparse(origin)
    origin_domain = parsed.netloc.lower()
    host_parsed = urllib.parse.urlsplit("//" + host_domain)
    loopback = _is_loopback(host_parsed.hostname)
    try:
        origin_port, host_port = parsed.port, host_parsed.port
    except ValueError:
        return True
    if origin_port is None:
        host_domain = host_parsed.hostname or ""
    if host_port is None:
        origin_domain = parsed.hostname or ""
    return bool(loopback and host_domain and origin_domain and host_domain != origin_domain)


def _compute_vars(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    for key, value in {
        "%width%": width, "%height%": height, "%year%": now.tm_year, "%month%": f"{now.tm_mon:02}",
        "%day%": f"{now.tm_mday:02}", "%hour%": f"{now.tm_hour:02}", "%minute%": f"{now.tm_min:02}",
        "%second%": f"{now.tm_sec:02}",
    }.items():  # fmt: skip
        prefix = prefix.replace(key, str(value))
    return prefix


def _save_image_path(prefix: str, output_dir: str, width: int, height: int) -> tuple[str, str, int, str]:
    """Port of `folder_paths.get_save_image_path`."""
    if "%" in prefix:
        prefix = _compute_vars(prefix, width, height)
    subfolder = os.path.dirname(os.path.normpath(prefix))
    filename = os.path.basename(os.path.normpath(prefix))
    full_output_folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((output_dir, os.path.abspath(full_output_folder))) != output_dir:
        raise Exception(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {os.path.abspath(full_output_folder)}"
            f"\n         output_dir: {output_dir}"
            f"\n         commonpath: {os.path.commonpath((output_dir, os.path.abspath(full_output_folder)))}"
        )
    prefix_len = len(filename)

    def map_filename(name: str) -> tuple[int, str]:
        try:
            digits = int(name[prefix_len + 1 :].split("_")[0])
        except ValueError:
            digits = 0
        return digits, name[: prefix_len + 1]

    try:
        counter = max(
            d for d, p in map(map_filename, os.listdir(full_output_folder))
            if os.path.normcase(p[:-1]) == os.path.normcase(filename) and p[-1:] == "_"
        ) + 1  # fmt: skip
    except ValueError:
        counter = 1
    except FileNotFoundError:
        os.makedirs(full_output_folder, exist_ok=True)
        counter = 1
    return full_output_folder, filename, counter, subfolder


def _write_images(images: dict[str, Any], prefix: str, out_dir: Path, text: dict[str, str], kind: str,
                  compress_level: int) -> dict[str, Any]:  # fmt: skip
    root = str(out_dir.resolve())
    folder, filename, counter, subfolder = _save_image_path(prefix, root, images["w"], images["h"])
    results = []
    for index in range(int(images.get("batch", 1))):
        name = f"{filename.replace('%batch_num%', str(index))}_{counter:05}_.png"
        png.save_png(png.render(images, index), Path(folder) / name, text=text, compress_level=compress_level)
        results.append({"filename": name, "subfolder": subfolder, "type": kind})
        counter += 1
    return {"images": results}


# --------------------------------------------------------------------------- CLI


async def _serve(args: argparse.Namespace) -> None:
    sim = ComfySim(args.models_dir, step_time=args.step_time, preview=args.preview, base_dir=args.base_dir)
    await sim.start(args.host, args.port)
    print(sim.base_url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m socialsync.daemon.sim.comfyui", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--base-dir", type=Path, default=None, help="holds output/, input/, temp/ (default: a temp dir)")
    parser.add_argument("--step-time", type=float, default=0.05, help="seconds per sampler step")
    parser.add_argument("--preview", action="store_true", help="send binary preview frames")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
