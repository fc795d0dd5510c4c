"""Model management without Vast: input rules, the catalogue, the fetch program run
locally, and attached servers (ComfyUI only, ComfyUI-Manager, SSH via metadata)."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from fleet_helpers import fleet, wait_for
from harness import running_daemon
from model_helpers import HF_TOKEN, FileServer, blob, leftovers, sha
from pydantic import SecretStr
from setuptools import find_packages

from socialsync.common.models_api import MODEL_FOLDERS, ModelDownloadCreate
from socialsync.daemon import keys
from socialsync.daemon.errors import BadRequest
from socialsync.daemon.services.models import (
    BOOTSTRAP,
    authorization_for,
    check_download,
    fetch_command,
    fetch_program,
    fetch_stdin,
    load_catalog,
)
from socialsync.daemon.settings import ModelSettings
from socialsync.daemon.sim.comfyui import ComfySim
from socialsync.daemon.sim.ssh import SshSim, comfy_roots

FAST = {"probe_interval": 0.05, "probe_interval_max": 0.2, "health_interval": 0.5, "ready_deadline": 3}
ROOT = Path(__file__).resolve().parents[1]


# -- rules ------------------------------------------------------------------------------


def req(**kw) -> ModelDownloadCreate:
    base = {"name": "Stable Diffusion v1.5", "url": "https://huggingface.co/model.safetensors",
            "folder": "checkpoints", "description": "Base model for image generation"}
    return ModelDownloadCreate.model_validate({**base, **kw})


def test_the_seed_request_is_accepted_and_names_the_file_after_the_url():
    spec = check_download(req())
    assert (spec.folder, spec.filename, spec.sha256) == ("checkpoints", "model.safetensors", None)
    assert check_download(req(name="flux1-dev.safetensors")).filename == "flux1-dev.safetensors"
    assert check_download(req(filename="x.gguf", sha256="AB" * 32)).sha256 == "ab" * 32


def test_refusals_carry_every_reason():
    with pytest.raises(BadRequest) as err:
        check_download(req(folder="custom_nodes", url="ftp://x/y", sha256="1"))
    paths = {f["path"] for f in err.value.extra["fields"]}
    assert paths == {"folder", "url", "sha256"}
    assert "unknown model folder" in err.value.details and "http:// or https://" in err.value.details


def test_the_command_line_is_fixed_text_and_quoted_values():
    settings = ModelSettings(hf_token=SecretStr(HF_TOKEN), comfy_root="/opt/ComfyUI")
    spec = check_download(req(url="https://huggingface.co/a/b/resolve/main/m+1.safetensors?sig=s3cr3t&x=1",
                              sha256="f" * 64))
    command = fetch_command(settings, spec)
    assert shlex.split(command) == ["python3", "-u", "-c", BOOTSTRAP, "/opt/ComfyUI/models/checkpoints",
                                    "m+1.safetensors", "f" * 64]
    # Neither the token nor the URL (a signed URL's query is a credential) is on it.
    assert HF_TOKEN not in command and "Bearer" not in command and "s3cr3t" not in command


def test_tokens_go_only_to_their_hub_over_https_or_loopback():
    s = ModelSettings(hf_token=SecretStr(HF_TOKEN), civitai_token=SecretStr("civ"), hf_hosts=["huggingface.co"])
    assert authorization_for("https://huggingface.co/x/resolve/main/a.safetensors", s)[0] == f"Bearer {HF_TOKEN}"
    assert authorization_for("https://cdn-lfs.huggingface.co/a.safetensors", s)[0] == f"Bearer {HF_TOKEN}"
    assert authorization_for("http://huggingface.co/a.safetensors", s) == (None, [])  # never in clear text
    assert authorization_for("https://huggingface.co.evil.example/a.safetensors", s) == (None, [])
    assert authorization_for("https://example.com/a.safetensors", s) == (None, [])
    assert authorization_for("https://civitai.com/api/download/models/1", s)[0] == "Bearer civ"
    assert authorization_for("https://huggingface.co/a.safetensors", ModelSettings()) == (None, [])


def test_the_catalogue_ships_as_package_data_and_passes_our_own_rules():
    catalog = load_catalog()
    assert len(catalog) >= 30
    assert len({m.id for m in catalog}) == len(catalog)
    assert len({(m.folder, m.filename) for m in catalog}) == len(catalog)
    assert {"sd15", "sdxl", "sd35", "flux"} <= {m.family for m in catalog}
    folders = {m.folder for m in catalog}
    assert {"checkpoints", "vae", "upscale_models", "controlnet", "text_encoders", "diffusion_models",
            "loras"} <= folders <= set(MODEL_FOLDERS)
    for m in catalog:
        spec = check_download(ModelDownloadCreate(name=m.name, url=m.url, folder=m.folder, filename=m.filename,
                                                  description=m.description, sha256=m.sha256))
        assert spec.filename == m.filename and m.url.startswith("https://") and m.license and m.size
    assert any(m.sha256 for m in catalog) and any(m.gated for m in catalog)
    assert "data" in find_packages(str(ROOT / "daemon"))  # so the json ships in the wheel
    assert (ROOT / "daemon" / "data" / "model_catalog.json").is_file()


def test_host_keys_are_trusted_on_first_use_and_pinned(tmp_path):
    import asyncssh

    from socialsync.daemon.services.ssh import HostKeys

    first, second = (asyncssh.generate_private_key("ssh-ed25519") for _ in range(2))
    keys_ = HostKeys(tmp_path / "known_hosts.json")
    assert keys_.check("1/20000001", first) and keys_.check("1/20000001", first)
    assert not keys_.check("1/20000001", second)  # changed: refused
    assert keys_.check("2/20000002", second)  # another server has its own
    assert not HostKeys(tmp_path / "known_hosts.json").check("1/20000001", second)  # kept on disk
    assert HostKeys(tmp_path / "other.json", policy="accept").check("1/20000001", second)


# -- the fetch program, run here -----------------------------------------------------------


async def run_fetch(dest: Path, filename: str, url: str, digest: str | None, **opts) -> tuple[int, list[dict]]:
    options = {"url": url, "authorization": None, "auth_hosts": [], "progress_interval": 0.01, "stall_timeout": 5,
               "attempts": 2, **opts}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-u", "-c", BOOTSTRAP, str(dest), filename, digest or "-",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(fetch_stdin(fetch_program(), options).encode()), 30)
    assert not err, err.decode()
    return proc.returncode, [json.loads(line) for line in out.decode().splitlines()]


async def test_fetch_program_restarts_when_the_server_ignores_range_and_finishes_a_complete_part(tmp_path):
    data = blob(300_000, seed=11)
    async with FileServer(files={"/m.safetensors": data}, ignore_range=True, delay=0) as files:
        (tmp_path / ".m.safetensors.part").write_bytes(b"garbage" * 10)
        code, events = await run_fetch(tmp_path, "m.safetensors", f"{files.url}/m.safetensors", sha(data))
        assert code == 0 and events[-1]["event"] == "done" and events[-1]["sha256"] == sha(data)
        assert (tmp_path / "m.safetensors").read_bytes() == data and leftovers(tmp_path) == []
        assert [s.status for s in files.requests] == [200]

        files.ignore_range = False
        (tmp_path / ".n.safetensors.part").write_bytes(data)  # already complete: 416 → verify → rename
        files.files["/n.safetensors"] = data
        code, events = await run_fetch(tmp_path, "n.safetensors", f"{files.url}/n.safetensors", sha(data))
        assert code == 0 and (tmp_path / "n.safetensors").read_bytes() == data
        assert files.requests[-1].status == 416


async def test_fetch_program_refusals(tmp_path):
    data = blob(1000, seed=12)
    async with FileServer(files={"/x/resolve/main/g.safetensors": data}, delay=0) as files:
        (tmp_path / "e.safetensors").write_bytes(b"other")
        code, events = await run_fetch(tmp_path, "e.safetensors", f"{files.url}/e.safetensors", sha(data))
        assert code == 1 and events[-1]["code"] == "exists"
        assert (tmp_path / "e.safetensors").read_bytes() == b"other"  # never clobbered

        url = f"{files.url}/x/resolve/main/g.safetensors"
        code, events = await run_fetch(tmp_path, "g.safetensors", url, None)  # no token: 401, final
        assert code == 1 and events[-1]["code"] == "auth" and not events[-1]["retry"]
        # A token for another host is not sent.
        code, events = await run_fetch(tmp_path, "g.safetensors", url, None, authorization=f"Bearer {HF_TOKEN}",
                                       auth_hosts=["huggingface.co"])
        assert code == 1 and events[-1]["code"] == "auth"
        assert all(s.authorization is None for s in files.requests)
        code, events = await run_fetch(tmp_path, "g.safetensors", url, None, authorization=f"Bearer {HF_TOKEN}",
                                       auth_hosts=["127.0.0.1"])
        assert code == 0 and (tmp_path / "g.safetensors").read_bytes() == data
        assert HF_TOKEN not in json.dumps(events)

        code, events = await run_fetch(tmp_path, "missing.safetensors", f"{files.url}/nope.safetensors", None)
        assert code == 1 and events[-1]["code"] == "not_found"


# -- attached servers ---------------------------------------------------------------------------


async def attach(api, name: str, url: str) -> int:
    async with api.post("/api/vast-servers/attach", json={"name": name, "comfyUrl": url}) as r:
        assert r.status == 201, await r.text()
        return (await r.json())["id"]


async def test_attached_comfyui_lists_models_and_refuses_downloads_without_a_way_in(tmp_path):
    comfy = ComfySim(step_time=0.01, seed_models=True, base_dir=tmp_path / "comfy")
    await comfy.start("127.0.0.1", 0)
    (comfy.models_dir / "loras" / "SDXL").mkdir()
    (comfy.models_dir / "loras" / "SDXL" / "style.safetensors").write_bytes(b"x" * 1234)
    try:
        async with running_daemon(tmp_path / "state", comfy=FAST) as d, d.session() as api:
            sid = await attach(api, "home", comfy.base_url)
            async with api.get(f"/api/comfy/{sid}/models") as r:
                assert r.status == 200, await r.text()
                body = await r.json()
            assert body["serverId"] == sid and not body["stale"]
            assert {"name": "SDXL/style.safetensors", "size": 1234} in body["folders"]["loras"]
            assert "custom_nodes" not in body["folders"] and "configs" not in body["folders"]
            assert body["count"] == sum(len(v) for v in body["folders"].values()) >= 5

            async with api.get(f"/api/comfy/{sid}/available-models", params={"folder": "vae"}) as r:
                catalogue = await r.json()
            assert list(catalogue["folders"]) == ["vae"]
            assert {m["id"]: m["installed"] for m in catalogue["folders"]["vae"]}["sdxl-vae"] is True

            async with api.get("/api/models/presence") as r:
                presence = await r.json()
            assert presence["servers"] == [{"id": sid, "name": "home"}]
            assert {"folder": "loras", "name": "SDXL/style.safetensors", "size": 1234, "serverIds": [sid]} \
                in presence["models"]

            async with api.post(f"/api/comfy/{sid}/models", json={
                    "name": "x", "url": "https://example.com/x.safetensors", "folder": "loras",
                    "description": ""}) as r:
                assert r.status == 409
                err = await r.json()
            assert err["code"] == "CONFLICT" and "ComfyUI-Manager" in err["details"] and "SSH" in err["details"]
            assert not await d.app[keys.DB].fetchall("SELECT * FROM model_downloads")

            # ComfyUI goes away: the last list is served, marked stale.
            await comfy.kill()
            async with api.get(f"/api/comfy/{sid}/models") as r:
                stale = await r.json()
            assert r.status == 200 and stale["stale"]
            assert {k: v for k, v in stale["folders"].items() if v} == {k: v for k, v in body["folders"].items() if v}

            async with api.get("/api/comfy/999/models") as r:
                assert r.status == 404 and (await r.json())["code"] == "SERVER_NOT_FOUND"
            async with api.post("/api/api-keys", json={"name": "v", "role": "viewer"}) as r:
                viewer = (await r.json())["key"]
            async with d.session(viewer) as v:
                async with v.get(f"/api/comfy/{sid}/models/downloads") as r:
                    assert r.status == 200 and await r.json() == []
                async with v.post(f"/api/comfy/{sid}/models", json={}) as r:
                    assert r.status == 403
    finally:
        await comfy.stop()


class FakeManager:
    """A ComfyUI with the legacy ComfyUI-Manager model queue (reference §10) that really
    downloads, and without /experiment/models (so sizes are unknown)."""

    def __init__(self, root: Path):
        self.root = root
        self.queue: list[dict] = []
        self.bodies: list[dict] = []
        self.done = 0
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._work: asyncio.Task | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/system_stats", self._stats)
        app.router.add_get("/models", self._folders)
        app.router.add_get("/models/{folder}", self._models)
        app.router.add_get("/manager/queue/status", self._status)
        app.router.add_post("/manager/queue/install_model", self._install)
        app.router.add_post("/manager/queue/start", self._start)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._work:
            self._work.cancel()
        if self._runner:
            await self._runner.cleanup()

    async def _stats(self, request):
        return web.json_response({"system": {"comfyui_version": "0.3.64"}, "devices": []})

    async def _folders(self, request):
        return web.json_response(["checkpoints", "loras"])

    async def _models(self, request):
        folder = self.root / request.match_info["folder"]
        return web.json_response(sorted(p.name for p in folder.iterdir()) if folder.is_dir() else [])

    async def _status(self, request):
        return web.json_response({"total_count": self.done + len(self.queue), "done_count": self.done,
                                  "in_progress_count": len(self.queue), "is_processing": bool(self.queue)})

    async def _install(self, request):
        body = await request.json()
        self.bodies.append(body)
        if not {"name", "type", "base", "save_path", "url", "filename"} <= body.keys():
            return web.Response(status=400, text="Invalid model install request is detected")
        self.queue.append(body)
        return web.Response()

    async def _start(self, request):
        self._work = asyncio.get_running_loop().create_task(self._download())
        return web.Response()

    async def _download(self):
        async with ClientSession() as session:
            while self.queue:
                item = self.queue[0]
                async with session.get(item["url"]) as r:
                    data = await r.read()
                target = self.root / item["save_path"]
                target.mkdir(parents=True, exist_ok=True)
                (target / item["filename"]).write_bytes(data)
                self.queue.pop(0)
                self.done += 1


async def test_attached_server_with_comfyui_manager_downloads_through_its_queue(tmp_path):
    manager = FakeManager(tmp_path / "models")
    url = await manager.start()
    data = blob(50_000, seed=21)
    try:
        async with FileServer(files={"/m/mgr.safetensors": data}, delay=0) as files, \
                running_daemon(tmp_path / "state", comfy=FAST, models={"manager_poll": 0.05}) as d, \
                d.session() as api:
            sid = await attach(api, "with-manager", url)
            body = {"name": "mgr", "url": f"{files.url}/m/mgr.safetensors", "folder": "loras", "description": "x"}
            async with api.post(f"/api/comfy/{sid}/models", json={**body, "sha256": sha(data)}) as r:
                assert r.status == 409 and "sha256" in (await r.json())["details"]
            async with api.post(f"/api/comfy/{sid}/models", json=body) as r:
                assert r.status == 202, await r.text()
                accepted = await r.json()
            assert accepted["method"] == "manager"

            async def done():
                async with api.get(f"/api/comfy/{sid}/models/downloads/{accepted['downloadId']}") as r:
                    b = await r.json()
                return b if b["status"] in ("completed", "failed") else None

            result = await wait_for(done, timeout=10)
            assert result["status"] == "completed", result
            assert (tmp_path / "models" / "loras" / "mgr.safetensors").read_bytes() == data
            assert manager.bodies[-1]["save_path"] == "loras" and manager.bodies[-1]["filename"] == "mgr.safetensors"
            async with api.get(f"/api/comfy/{sid}/models") as r:
                listed = await r.json()
            assert {"name": "mgr.safetensors", "size": None} in listed["folders"]["loras"]
    finally:
        await manager.stop()


async def test_attached_server_with_ssh_in_metadata_downloads_over_ssh(tmp_path):
    comfy = ComfySim(step_time=0.01, seed_models=True, base_dir=tmp_path / "comfy")
    await comfy.start("127.0.0.1", 0)
    ssh = SshSim(comfy_roots({7: comfy}, "/opt/ComfyUI"), comfy_root="/opt/ComfyUI")
    data = blob(200_000, seed=31)
    try:
        async with FileServer(files={"/f/a.safetensors": data}, delay=0) as files, \
                fleet(tmp_path, comfy=FAST, models={"comfy_root": "/opt/ComfyUI", "retry_base": 0.01,
                                                    "attempts": 2}) as (_sim, d), d.session() as api:
            sid = await attach(api, "ssh-box", comfy.base_url)
            port = await ssh.on_running({"id": 7})
            async with api.patch(f"/api/vast-servers/{sid}",
                                 json={"metadata": {"ssh": {"host": "127.0.0.1", "port": port}}}) as r:
                assert r.status == 200, await r.text()
            body = {"name": "a", "url": f"{files.url}/f/a.safetensors", "folder": "vae", "description": "",
                    "sha256": sha(data)}

            # Our key is not authorized there yet: SSH refuses, the download fails with the reason.
            async with api.post(f"/api/comfy/{sid}/models", json=body) as r:
                assert r.status == 202
                first = (await r.json())["downloadId"]

            async def finished(did):
                async with api.get(f"/api/comfy/{sid}/models/downloads/{did}") as r:
                    b = await r.json()
                return b if b["status"] in ("completed", "failed") else None

            failed = await wait_for(lambda: finished(first), timeout=10)
            assert failed["status"] == "failed" and "refused" in failed["error"]
            assert ssh.commands == [] and ssh.auth_log and not any(ok for *_, ok in ssh.auth_log)

            ssh.extra_keys[7] = {" ".join((await d.app[keys.MODELS].identity.get()).public_line.split()[:2])}
            async with api.post(f"/api/comfy/{sid}/models", json=body) as r:
                second = (await r.json())["downloadId"]
            done = await wait_for(lambda: finished(second), timeout=10)
            assert done["status"] == "completed", done
            assert (comfy.models_dir / "vae" / "a.safetensors").read_bytes() == data
            assert "/opt/ComfyUI/models/vae" in ssh.commands[0].command
            key_file = d.settings.state_dir / "ssh" / "id_ed25519"
            assert key_file.stat().st_mode & 0o777 == 0o600
    finally:
        await ssh.close()
        await comfy.stop()
