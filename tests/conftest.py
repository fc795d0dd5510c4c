from __future__ import annotations

import os
import tempfile

import aiohttp
import pytest
from harness import running_daemon

from socialsync.daemon.sim.comfyui import ComfySim

# Tests never read the developer's own configuration or Vast key.
for var in list(os.environ):
    if var.startswith("SOCIALSYNC_") or var in ("VAST_API_KEY", "HF_TOKEN", "CIVITAI_TOKEN",
                                                "CONFIGURATION_DIRECTORY", "STATE_DIRECTORY", "RUNTIME_DIRECTORY"):
        del os.environ[var]
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="socialsync-test-config-")


@pytest.fixture
async def daemon(tmp_path):
    async with running_daemon(tmp_path / "state") as d:
        yield d


@pytest.fixture
async def admin(daemon):
    async with daemon.session() as s:
        yield s


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def sim(tmp_path):
    """A fast ComfyUI simulator (the Vast tests define their own ``sim``)."""
    async with ComfySim(base_dir=tmp_path / "comfy", step_time=0.005) as s:
        yield s
