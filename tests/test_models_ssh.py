"""Model downloads over real SSH and HTTP on loopback: daemon → Vast sim → SSH sim (runs
the command for real) → the test's file server; the file lands in the ComfyUI sim."""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from datetime import datetime
from itertools import pairwise

import orjson
from fleet_helpers import fleet, server, wait_for
from model_helpers import CIVITAI_TOKEN, HF_TOKEN, TOKENS, FileServer, blob, leftovers, sha

from socialsync.daemon import keys
from socialsync.daemon.demo import DemoComfyProvider
from socialsync.daemon.sim.ssh import SshSim, comfy_roots

FAST = {"probe_interval": 0.05, "probe_interval_max": 0.2, "health_interval": 0.5, "ready_deadline": 5}
MODELS = {
    "hf_token": HF_TOKEN, "civitai_token": CIVITAI_TOKEN, "hf_hosts": ["localhost"],
    "progress_interval": 0.05, "event_interval": 0.1, "retry_base": 0.05, "ssh_connect_timeout": 5,
    "stall_timeout": 10, "attempts": 4,
}


class Recorder:
    """Every response body and event the test saw, for the token-leak check."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.bodies: list[str] = []
        self.sub = daemon.app[keys.BUS].subscribe(100_000)
        self._seen: list = []

    async def call(self, api, method: str, path: str, **kw):
        async with api.request(method, path, **kw) as r:
            text = await r.text()
            self.bodies.append(text)
            return r.status, (json.loads(text) if text else None)

    def events(self, type_: str | None = None) -> list[dict]:
        out = []
        while not self.sub.queue.empty():
            self._seen.append(self.sub.queue.get_nowait())
        for e in self._seen:
            if type_ is None or e.type == type_:
                out.append(e.as_dict())
        return out

    async def assert_no_token_anywhere(self, caplog, ssh: SshSim) -> None:
        db = self.daemon.app[keys.DB]
        audit = [dict(r) for r in await db.fetchall("SELECT * FROM audit_logs")]
        downloads = [dict(r) for r in await db.fetchall("SELECT * FROM model_downloads")]
        texts = {
            "log": caplog.text + "\n".join(r.getMessage() for r in caplog.records),
            "responses": "\n".join(self.bodies),
            "events": orjson.dumps(self.events()).decode(),
            "audit": orjson.dumps(audit).decode(),
            "downloads": orjson.dumps(downloads).decode(),
            "commands": "\n".join(c.command for c in ssh.commands),
        }
        for where, text in texts.items():
            for token in TOKENS:
                assert token not in text, f"{token} leaked into {where}"
        assert audit and caplog.records and ssh.commands  # the check looked at something


@asynccontextmanager
async def ssh_fleet(tmp_path, **models):
    provider = DemoComfyProvider(tmp_path / "comfy", step_time=0.01, shared_models=False)
    ssh = SshSim(comfy_roots(provider.sims))
    files = FileServer()
    await files.start()
    try:
        async with fleet(tmp_path, sim_kw={"comfy_provider": provider, "ssh_provider": ssh}, comfy=FAST,
                         models={**MODELS, **models}) as (sim, d):
            ssh.attach_vast(sim)
            async with d.session() as api:
                yield sim, d, api, ssh, provider, files
    finally:
        await ssh.close()
        await provider.close()
        await files.stop()


async def launch_ready(api, sim, d) -> tuple[int, int]:
    offers = await (await api.get("/api/vast-offers", params={"order": "price"})).json()
    async with api.post("/api/vast-servers", json={"offerId": offers[0]["offerId"]}) as r:
        assert r.status == 201, await r.text()
        sid = (await r.json())["id"]

    async def ready():
        s = await server(api, sid)
        row = await d.app[keys.FLEET].row(sid)
        return s if s["setupStatus"] == "ready" and row["ssh_host"] else None

    s = await wait_for(ready, timeout=10)
    vast_id = int(s["vastId"])
    public = (await d.app[keys.MODELS].identity.get()).public_line
    await wait_for(lambda: " ".join(public.split()[:2]) in {" ".join(k.split()[:2])
                                                           for k in sim.instances[vast_id].ssh_keys})
    return sid, vast_id


async def finished(rec: Recorder, api, sid: int, did: int, timeout: float = 15) -> dict:
    async def done():
        status, body = await rec.call(api, "GET", f"/api/comfy/{sid}/models/downloads/{did}")
        assert status == 200, body
        return body if body["status"] in ("completed", "failed", "cancelled") else None

    return await wait_for(done, timeout=timeout, interval=0.05)


async def test_download_from_start_to_listed_model_with_progress_and_tokens(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with ssh_fleet(tmp_path) as (sim, d, api, ssh, provider, files):
        rec = Recorder(d)
        sid, vast_id = await launch_ready(api, sim, d)
        checkpoint = blob(3 * 1024 * 1024 + 17, seed=7)
        lora = blob(1024 * 1024 + 5, seed=8)
        files.files["/dl/tiny-model.safetensors"] = checkpoint
        files.files["/acme/gated/resolve/main/gated-lora.safetensors"] = lora

        status, body = await rec.call(api, "POST", f"/api/comfy/{sid}/models", json={
            # A query string, as Civitai's download links have, is accepted.
            "name": "Tiny model", "url": f"{files.url}/dl/tiny-model.safetensors?type=Model&format=SafeTensor",
            "folder": "checkpoints",
            "description": "A test checkpoint", "sha256": sha(checkpoint)})
        assert status == 202, body
        assert body["method"] == "ssh" and body["status"] == "queued" and body["downloadId"] > 0
        assert body["download"]["filename"] == "tiny-model.safetensors"
        did = body["downloadId"]
        result = await finished(rec, api, sid, did)
        assert result["status"] == "completed", result
        assert result["bytesDone"] == result["bytesTotal"] == len(checkpoint)

        # The file is really there, under its name only, and ComfyUI lists it with its size.
        folder = provider.sims[vast_id].models_dir / "checkpoints"
        assert (folder / "tiny-model.safetensors").read_bytes() == checkpoint
        assert leftovers(folder) == []
        status, listed = await rec.call(api, "GET", f"/api/comfy/{sid}/models")
        assert status == 200 and not listed["stale"]
        assert {"name": "tiny-model.safetensors", "size": len(checkpoint)} in listed["folders"]["checkpoints"]
        assert "sdxl_vae.safetensors" in {m["name"] for m in listed["folders"]["vae"]}

        # Progress went out as model_download events: queued → running → progress → completed.
        events = [e["data"] for e in rec.events("model_download") if e["data"]["downloadId"] == did]
        statuses = [e["status"] for e in events]
        assert statuses[0] == "queued" and statuses[-1] == "completed" and "running" in statuses
        progress = [e for e in events if e["status"] == "running" and e["bytesDone"]]
        assert progress and all(e["bytesTotal"] == len(checkpoint) for e in progress)
        assert any(0 < e["bytesDone"] < len(checkpoint) and e["rate"] for e in progress)
        assert set(events[0]) >= {"downloadId", "serverId", "name", "folder", "status", "bytesDone",
                                  "bytesTotal", "rate"}
        stamps = [datetime.fromisoformat(e["ts"]) for e in rec.events("model_download")
                  if e["data"]["downloadId"] == did and e["data"]["status"] == "running"]
        # Throttled: event_interval is 0.1 s here (0.25 s by default); the status change and the
        # start of the transfer are sent at once, progress after that no faster than that.
        gaps = [(b - a).total_seconds() for a, b in pairwise(stamps[2:])]
        assert gaps and min(gaps) >= 0.09

        # A gated hub file: the token reaches the hub (and only the hub), through stdin.
        status, body = await rec.call(api, "POST", f"/api/comfy/{sid}/models", json={
            "name": "gated-lora.safetensors", "url": f"{files.hf_url}/acme/gated/resolve/main/gated-lora.safetensors",
            "folder": "loras", "description": "Needs a token"})
        assert status == 202, body
        gated = await finished(rec, api, sid, body["downloadId"])
        assert gated["status"] == "completed", gated
        assert (provider.sims[vast_id].models_dir / "loras" / "gated-lora.safetensors").read_bytes() == lora
        hub = [s for s in files.requests if "/resolve/" in s.path]
        assert hub and all(s.authorization == f"Bearer {HF_TOKEN}" for s in hub)
        assert all(s.authorization is None for s in files.requests if s.path.startswith("/dl/"))

        # The list of downloads, the presence map, the catalogue's installed flag.
        status, downloads = await rec.call(api, "GET", f"/api/comfy/{sid}/models/downloads")
        assert [x["status"] for x in downloads] == ["completed", "completed"]
        status, presence = await rec.call(api, "GET", "/api/models/presence")
        entry = next(m for m in presence["models"] if m["name"] == "tiny-model.safetensors")
        assert entry == {"folder": "checkpoints", "name": "tiny-model.safetensors", "size": len(checkpoint),
                         "serverIds": [sid]}
        status, catalogue = await rec.call(api, "GET", f"/api/comfy/{sid}/available-models")
        vae = {m["id"]: m for m in catalogue["folders"]["vae"]}
        assert vae["sdxl-vae"]["installed"] is True and vae["sd15-vae-mse"]["installed"] is False

        # Audit: the request and the outcome, both without secrets.
        status, audit = await rec.call(api, "GET", "/api/audit-logs", params={"action": "model.download"})
        assert audit[0]["outcome"] == "success" and audit[0]["details"]["downloadId"] in (did, body["downloadId"])
        status, audit = await rec.call(api, "GET", "/api/audit-logs", params={"action": "model.download.finished"})
        assert {a["outcome"] for a in audit} == {"success"} and len(audit) == 2

        # Every command was fixed text plus quoted values; the token never in one.
        assert len(ssh.commands) == 2 and all(c.command.startswith("python3 -u -c ") for c in ssh.commands)
        await rec.assert_no_token_anywhere(caplog, ssh)


async def test_hash_mismatch_is_rejected_and_cleaned_up(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with ssh_fleet(tmp_path) as (sim, d, api, ssh, provider, files):
        rec = Recorder(d)
        sid, vast_id = await launch_ready(api, sim, d)
        data = blob(512 * 1024, seed=3)
        files.files["/dl/bad.safetensors"] = data
        status, body = await rec.call(api, "POST", f"/api/comfy/{sid}/models", json={
            "name": "Bad", "url": f"{files.url}/dl/bad.safetensors", "folder": "loras",
            "description": "", "sha256": "0" * 64})
        assert status == 202, body
        result = await finished(rec, api, sid, body["downloadId"])
        assert result["status"] == "failed"
        assert "sha256 mismatch" in result["error"] and sha(data) in result["error"]
        folder = provider.sims[vast_id].models_dir / "loras"
        assert not (folder / "bad.safetensors").exists() and leftovers(folder) == []
        status, listed = await rec.call(api, "GET", f"/api/comfy/{sid}/models")
        assert "bad.safetensors" not in {m["name"] for m in listed["folders"]["loras"]}
        assert len(ssh.commands) == 1  # a mismatch is final: no retry
        last = [e["data"] for e in rec.events("model_download")][-1]
        assert last["status"] == "failed" and "sha256 mismatch" in last["error"]

        # Cancel mid-way: the partial file stays; the same POST again resumes it.
        slow = blob(2 * 1024 * 1024, seed=4)
        files.files["/dl/slow.safetensors"] = slow
        files.hold_at["/dl/slow.safetensors"] = 512 * 1024  # the server stalls there until released
        files.delay = 0.06  # a progress line per chunk (progress_interval is 0.05 s)
        request = {"name": "Slow", "url": f"{files.url}/dl/slow.safetensors", "folder": "loras",
                   "description": "", "sha256": sha(slow)}
        status, body = await rec.call(api, "POST", f"/api/comfy/{sid}/models", json=request)
        did = body["downloadId"]

        async def halfway():
            _, b = await rec.call(api, "GET", f"/api/comfy/{sid}/models/downloads/{did}")
            return b["bytesDone"] >= 256 * 1024

        await wait_for(halfway, timeout=10)
        status, again = await rec.call(api, "POST", f"/api/comfy/{sid}/models", json=request)
        assert status == 409 and again["code"] == "CONFLICT"  # one download of a file at a time
        status, cancelled = await rec.call(api, "DELETE", f"/api/comfy/{sid}/models/downloads/{did}")
        assert status == 200 and cancelled["status"] == "cancelled", cancelled
        await wait_for(lambda: (folder / ".slow.safetensors.part").exists() and ssh.commands[-1].exit_status
                       is not None)
        kept = (folder / ".slow.safetensors.part").stat().st_size
        assert 256 * 1024 <= kept <= 512 * 1024
        del files.hold_at["/dl/slow.safetensors"]
        files.delay = 0
        files.released.set()
        status, body = await rec.call(api, "POST", f"/api/comfy/{sid}/models", json=request)
        assert status == 202
        resumed = await finished(rec, api, sid, body["downloadId"])
        assert resumed["status"] == "completed", resumed
        assert (folder / "slow.safetensors").read_bytes() == slow and leftovers(folder) == []
        last_range = [s.range for s in files.requests if s.path == "/dl/slow.safetensors"][-1]
        assert last_range is not None and int(last_range.removeprefix("bytes=").rstrip("-")) >= kept
        await rec.assert_no_token_anywhere(caplog, ssh)


async def test_dropped_connections_are_resumed(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with ssh_fleet(tmp_path) as (sim, d, api, ssh, provider, files):
        rec = Recorder(d)
        sid, vast_id = await launch_ready(api, sim, d)
        data = blob(4 * 1024 * 1024, seed=5)
        files.files["/dl/big.safetensors"] = data
        ssh.drop_after(1024 * 1024)  # the SSH connection breaks once, a quarter of the way in
        files.break_after["/dl/big.safetensors"] = 3 * 1024 * 1024  # and the HTTP one later on
        status, body = await rec.call(api, "POST", f"/api/comfy/{sid}/models", json={
            "name": "Big", "url": f"{files.url}/dl/big.safetensors", "folder": "checkpoints",
            "description": "", "sha256": sha(data)})
        assert status == 202
        result = await finished(rec, api, sid, body["downloadId"], timeout=20)
        assert result["status"] == "completed", result
        folder = provider.sims[vast_id].models_dir / "checkpoints"
        assert (folder / "big.safetensors").read_bytes() == data and leftovers(folder) == []

        assert [c.dropped for c in ssh.commands] == [True, False]
        ranges = [s.range for s in files.requests if s.path == "/dl/big.safetensors"]
        assert ranges[0] is None and len(ranges) >= 3
        offsets = [int(r.removeprefix("bytes=").rstrip("-")) for r in ranges[1:]]
        assert all(o >= 1024 * 1024 for o in offsets)  # every retry continued, none started over
        assert [s.status for s in files.requests if s.path == "/dl/big.safetensors"][1:] == [206] * len(offsets)
        events = [e["data"] for e in rec.events("model_download")]
        assert any(e["error"] and e["error"].startswith("retrying:") for e in events)
        await rec.assert_no_token_anywhere(caplog, ssh)


BAD_INPUTS = [
    ({"folder": "custom_nodes"}, "folder", "unknown model folder"),
    ({"folder": "../../etc"}, "folder", "unknown model folder"),
    ({"folder": "clip"}, "folder", "use 'text_encoders'"),
    ({"filename": "../evil.safetensors"}, "filename", "'/'"),
    ({"filename": "a/b.safetensors"}, "filename", "'/'"),
    ({"filename": "..safetensors"}, "filename", "'..'"),
    ({"filename": ".hidden.safetensors"}, "filename", "start with '.'"),
    ({"filename": "bad\x07name.safetensors"}, "filename", "control characters"),
    ({"filename": "model.exe"}, "filename", "must end in one of"),
    ({"filename": "-rf.safetensors"}, "filename", "may contain only"),
    ({"name": "x; rm -rf /"}, "name", "shell metacharacters"),
    ({"name": "a\nb"}, "name", "control characters"),
    ({"name": "../../x.safetensors"}, "name", "'..'"),
    ({"url": "ftp://127.0.0.1/x.safetensors"}, "url", "http:// or https://"),
    ({"url": "file:///etc/passwd"}, "url", "http:// or https://"),
    ({"url": "http:///x.safetensors"}, "url", "no host"),
    ({"url": "https://h.example/$(reboot).safetensors"}, "url", "shell metacharacters"),
    ({"url": "https://h.example/a.safetensors;reboot"}, "url", "shell metacharacters"),
    ({"url": "https://h.example/`id`.safetensors"}, "url", "shell metacharacters"),
    ({"url": "https://h.example/a.safetensors?x=$(id)"}, "url", "shell metacharacters"),
    ({"url": "https://h.example/a&b.safetensors"}, "url", "shell metacharacters"),
    ({"url": "https://user:pw@h.example/a.safetensors"}, "url", "credentials"),
    ({"url": "https://h.example/a b.safetensors"}, "url", "whitespace"),
    ({"url": "https://h.example/download"}, "filename", "give 'filename'"),
    ({"description": "nice | cat /etc/shadow"}, "description", "shell metacharacters"),
    ({"description": "it's great"}, "description", "shell metacharacters"),
    ({"sha256": "abc"}, "sha256", "64 hexadecimal"),
    ({"sha256": "g" * 64}, "sha256", "64 hexadecimal"),
]


async def test_each_bad_input_is_refused_and_nothing_runs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with ssh_fleet(tmp_path) as (sim, d, api, ssh, _provider, files):
        rec = Recorder(d)
        sid, _ = await launch_ready(api, sim, d)
        good = {"name": "Good", "url": f"{files.url}/dl/good.safetensors", "folder": "checkpoints",
                "description": "fine"}
        for change, field, reason in BAD_INPUTS:
            status, body = await rec.call(api, "POST", f"/api/comfy/{sid}/models", json={**good, **change})
            assert status == 400, (change, body)
            assert body["code"] == "VALIDATION_ERROR" and reason in body["details"], (change, body)
            assert field in {f["path"] for f in body["fields"]}, (change, body)
        # Pydantic's own checks (missing and unknown fields) are 400 too.
        status, body = await rec.call(api, "POST", f"/api/comfy/{sid}/models", json={"name": "x"})
        assert status == 400 and body["code"] == "VALIDATION_ERROR"
        status, body = await rec.call(api, "POST", f"/api/comfy/{sid}/models", json={**good, "cmd": "id"})
        assert status == 400 and body["code"] == "VALIDATION_ERROR"

        assert ssh.commands == [] and files.requests == []  # nothing ran, nothing was fetched
        assert not await d.app[keys.DB].fetchall("SELECT * FROM model_downloads")
        status, audit = await rec.call(api, "GET", "/api/audit-logs",
                                       params={"action": "model.download", "limit": 100})
        assert len(audit) == len(BAD_INPUTS) + 2 and {a["outcome"] for a in audit} == {"failure"}
        assert all(a["details"]["code"] == "VALIDATION_ERROR" for a in audit)
