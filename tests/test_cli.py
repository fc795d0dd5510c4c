"""``socialsync`` subcommands, run as subprocesses against a real ``socialsyncd --demo``
process: exit statuses, JSON that matches the API, error codes on stderr."""

from __future__ import annotations

import io
import json
import re
import urllib.request

import pytest
from cli_helpers import (
    clean_env,
    free_port,
    run_cli,
    run_many,
    start_demo_daemon,
    stop_process,
    wait_until,
)

from socialsync.tui.cli import ProgressBar, table
from socialsync.tui.connect import ConnectError, resolve

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """One demo daemon for the module, with one server launched (ready by the time the
    generation tests need it)."""
    home = tmp_path_factory.mktemp("cli")
    daemon = start_demo_daemon(home, free_port())
    try:
        offer = daemon.api("GET", "/api/vast-offers?order=price&limit=1")[0]
        daemon.ready_id = daemon.api("POST", "/api/vast-servers", {"offerId": offer["offerId"], "name": "gpu-a"})["id"]
        yield daemon
    finally:
        stop_process(daemon.proc)


def ready_server(fleet) -> int:
    sid = fleet.ready_id
    wait_until(lambda: fleet.api("GET", f"/api/vast-servers/{sid}")["setupStatus"] == "ready", timeout=60)
    return sid


# -- usage ------------------------------------------------------------------------------


def test_help_documents_commands_and_exit_statuses(tmp_path):
    help_, no_action = run_many(["--help"], ["servers"], env=clean_env(tmp_path))
    assert help_.returncode == 0, help_.stderr
    for command in ("demo", "servers", "offers", "generate", "generations", "events", "keys"):
        assert re.search(rf"^\s+{command}\s", help_.stdout, re.M), command
    for code in ("0", "1", "2", "3", "4", "130"):
        assert re.search(rf"^\s+{code}\s+\S", help_.stdout, re.M), f"exit status {code} not documented"
    assert no_action.returncode == 2 and "usage:" in no_action.stderr


# -- servers and offers -----------------------------------------------------------------


def test_offers_search_json_matches_api(fleet):
    r = fleet.cli("offers", "search", "--limit", "3", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == fleet.api("GET", "/api/vast-offers?order=price&limit=3")


def test_server_lifecycle(fleet):
    offers = fleet.api("GET", "/api/vast-offers?order=price&limit=5")
    r = fleet.cli("servers", "launch", offers[-1]["offerId"], "--name", "cli-made", "--disk", "50", "--json")
    assert r.returncode == 0, r.stderr
    launched = json.loads(r.stdout)
    sid = launched["id"]
    assert launched["status"] == "launching" and fleet.api("GET", f"/api/vast-servers/{sid}")["name"] == "cli-made"

    wait_until(lambda: fleet.api("GET", f"/api/vast-servers/{sid}")["status"] == "running", timeout=30)
    r = fleet.cli("servers", "stop", str(sid), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "stopped"
    assert fleet.api("GET", f"/api/vast-servers/{sid}")["status"] == "stopped"

    start, refused, listed = run_many(
        ["--url", fleet.url, "--api-key-file", str(fleet.key_file), "servers", "start", str(sid)],
        # Not a terminal and no --yes: refused before anything is sent.
        ["--url", fleet.url, "--api-key-file", str(fleet.key_file), "servers", "destroy", str(sid)],
        # Global options before the command work too.
        ["--json", "--url", fleet.url, "--api-key-file", str(fleet.key_file), "servers", "list", "--all"],
        env=clean_env(fleet.home))
    assert start.returncode == 0, start.stderr
    assert f"server {sid} 'cli-made' starting" in start.stdout
    assert fleet.api("GET", f"/api/vast-servers/{sid}")["status"] in ("loading", "running")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert fleet.api("GET", f"/api/vast-servers/{sid}")["status"] != "destroyed"

    r = fleet.cli("servers", "destroy", str(sid), "--yes", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["success"] is True
    assert fleet.api("GET", f"/api/vast-servers/{sid}")["status"] == "destroyed"

    assert listed.returncode == 0, listed.stderr
    ids = [s["id"] for s in json.loads(listed.stdout)]
    assert sid in ids and ids == [s["id"] for s in fleet.api("GET", "/api/vast-servers?include=destroyed")]


# -- errors and exit statuses -----------------------------------------------------------


def test_errors_have_the_seed_code_and_exit_status(fleet, tmp_path):
    env = clean_env(tmp_path)
    unknown, no_server, bad_key, closed, no_key_file = run_many(
        ["--url", fleet.url, "--api-key-file", str(fleet.key_file), "servers", "show", "9999", "--json"],
        ["--url", fleet.url, "--api-key-file", str(fleet.key_file), "generate", "9999", "nothing", "--wait"],
        ["--url", fleet.url, "--api-key", "ssk_not-a-real-key", "servers", "list"],
        ["--url", f"http://127.0.0.1:{free_port()}", "--api-key", "x", "servers", "list"],
        ["--url", fleet.url, "--api-key-file", str(tmp_path / "missing.key"), "servers", "list"],
        env=env)
    assert unknown.returncode == 1
    assert "error: Server not found (SERVER_NOT_FOUND)" in unknown.stderr and "9999" in unknown.stderr
    assert json.loads(unknown.stdout)["code"] == "SERVER_NOT_FOUND"  # --json: the error body on stdout
    assert no_server.returncode == 1 and "(SERVER_NOT_FOUND)" in no_server.stderr
    assert bad_key.returncode == 1 and "(INVALID_API_KEY)" in bad_key.stderr and bad_key.stdout == ""
    assert closed.returncode == 3 and "cannot reach the daemon" in closed.stderr
    assert no_key_file.returncode == 2 and "missing.key" in no_key_file.stderr


# -- generations ------------------------------------------------------------------------


def test_generate_wait_follows_progress_and_prints_image_urls(fleet):
    sid = ready_server(fleet)
    r = fleet.cli("generate", str(sid), "a lighthouse at dusk", "--steps", "4", "--seed", "7",
                  "--width", "512", "--height", "512", "--negative", "blurry", "--wait")
    assert r.returncode == 0, r.stderr
    urls = r.stdout.split()
    assert urls and all(u.startswith(fleet.url + "/api/images/") for u in urls)
    # stderr is not a terminal: one line per 10 %, no bar, no carriage returns.
    assert "\r" not in r.stderr and re.search(r"generation \d+: 100%", r.stderr)
    gid = int(re.search(r"generation (\d+) completed", r.stderr).group(1))
    req = urllib.request.Request(urls[0], headers={"X-API-Key": fleet.key})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.read(8) == b"\x89PNG\r\n\x1a\n"

    g = fleet.api("GET", f"/api/generations/{gid}")
    assert (g["status"], g["seed"], g["negativePrompt"], g["parameters"]["steps"]) == ("completed", 7, "blurry", 4)
    as_json, human = run_many(
        ["--url", fleet.url, "--api-key-file", str(fleet.key_file), "generations", "list", "--server", str(sid),
         "--json"],
        ["--url", fleet.url, "--api-key-file", str(fleet.key_file), "generations", "list"],
        env=clean_env(fleet.home))
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == fleet.api("GET", f"/api/comfy/{sid}/generations")
    assert human.returncode == 0, human.stderr
    assert any(line.split()[:3] == [str(gid), str(sid), "completed"] for line in human.stdout.splitlines())


def test_generate_through_the_fleet_queue_and_show_the_queue(fleet):
    sid = ready_server(fleet)
    # No SERVER_ID: the daemon's queue picks the ready server; --wait follows it to the end.
    r = fleet.cli("generate", "a harbour at dawn", "--steps", "3", "--priority", "5", "--wait")
    assert r.returncode == 0, r.stderr
    gid = int(re.search(r"generation (\d+) completed", r.stderr).group(1))
    g = fleet.api("GET", f"/api/generations/{gid}")
    assert (g["status"], g["serverId"]) == ("completed", sid)
    assert r.stdout.split() and all(u.startswith(fleet.url + "/api/images/") for u in r.stdout.split())
    # One that no server can run waits; the queue says why.
    r = fleet.cli("generate", "a lighthouse", "--checkpoint", "nowhere.safetensors", "--json")
    assert r.returncode == 0, r.stderr
    waiting = json.loads(r.stdout)["generationId"]
    human, as_json = fleet.cli("queue"), fleet.cli("queue", "--json")
    assert human.returncode == 0 and as_json.returncode == 0, human.stderr + as_json.stderr
    assert [i["generationId"] for i in json.loads(as_json.stdout)["items"]] == [waiting]
    line = next(x for x in human.stdout.splitlines() if x.split()[:1] == [str(waiting)])
    assert "no ready server has nowhere.safetensors" in line
    # Queue-only options with a server are a usage error (exit 2), nothing sent.
    bad = fleet.cli("generate", str(sid), "x", "--priority", "3")
    assert bad.returncode == 2 and "leave out SERVER_ID" in bad.stderr
    assert fleet.cli("generations", "cancel", str(waiting)).returncode == 0


def test_generate_wait_exits_4_when_the_generation_is_cancelled(fleet):
    sid = ready_server(fleet)
    waiting = fleet.cli_bg("generate", str(sid), "a very slow painting", "--steps", "150", "--wait")
    try:
        line = waiting.stderr.readline()
        gid = int(re.match(r"generation (\d+) queued", line).group(1))
        r = fleet.cli("generations", "cancel", str(gid), "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["status"] == "cancelled"
        out, err = waiting.communicate(timeout=60)
    finally:
        stop_process(waiting)
    assert waiting.returncode == 4, err
    assert f"error: generation {gid} cancelled" in err and out == ""


# -- events -----------------------------------------------------------------------------


def test_events_stream_json_lines(fleet):
    events = fleet.cli_bg("events", "--snapshot", "--types", "audit", "--count", "1", "--transport", "ws")
    try:
        hello = json.loads(events.stdout.readline())  # printed once the stream is live
        assert hello["type"] == "hello" and isinstance(hello["snapshot"]["servers"], list)
        created = fleet.api("POST", "/api/api-keys", {"name": "events-probe", "role": "viewer"})
        out, err = events.communicate(timeout=30)
    finally:
        stop_process(events)
    assert events.returncode == 0, err
    (line,) = out.splitlines()
    event = json.loads(line)
    assert set(event) == {"type", "data", "seq", "ts"} and event["type"] == "audit"
    assert event["seq"] > hello["seq"] and event["data"]["action"] == "api_key.create"
    assert str(event["data"]["targetId"]) == str(created["id"])


# -- keys -------------------------------------------------------------------------------


def test_keys_create_list_revoke(fleet):
    r = fleet.cli("keys", "create", "ci-bot", "--role", "viewer")
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert "\n" not in key and key.startswith("ssk_") and "shown this once" in r.stderr

    # The new key works, from the environment (and the daemon's URL from it too).
    env = clean_env(fleet.home, SOCIALSYNC_URL=fleet.url, SOCIALSYNC_API_KEY=key)
    stats, listed = run_many(["stats", "--json"],
                             ["--url", fleet.url, "--api-key-file", str(fleet.key_file), "keys", "list", "--json"],
                             env=env)
    assert stats.returncode == 0, stats.stderr
    assert "servers" in json.loads(stats.stdout)
    assert listed.returncode == 0, listed.stderr
    keys = json.loads(listed.stdout)
    assert [(k["id"], k["name"]) for k in keys] == [(k["id"], k["name"]) for k in fleet.api("GET", "/api/api-keys")]
    mine = next(k for k in keys if k["name"] == "ci-bot")
    assert mine["role"] == "viewer" and "key" not in mine

    r = fleet.cli("keys", "revoke", str(mine["id"]))
    assert r.returncode == 0 and f"API key {mine['id']} 'ci-bot' revoked" in r.stdout
    assert next(k for k in fleet.api("GET", "/api/api-keys") if k["id"] == mine["id"])["revokedAt"]


def test_local_admin_key_is_found_without_flags(fleet):
    """No --url, no key: $SOCIALSYNC_URL and the admin key in $SOCIALSYNC_STATE_DIR."""
    env = clean_env(fleet.home, SOCIALSYNC_URL=fleet.url, SOCIALSYNC_STATE_DIR=str(fleet.state_dir))
    r = run_cli("servers", "list", env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATUS", "SETUP", "GPU", "$/H", "LOCATION", "COMFYUI"]
    assert any(line.split()[:2] == [str(fleet.ready_id), "gpu-a"] for line in lines[1:])


# -- units: connection settings, output -------------------------------------------------


def test_resolve_precedence(tmp_path):
    state = tmp_path / "data" / "socialsync"
    state.mkdir(parents=True)
    (state / "admin.key").write_text("admin-key\n")
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_DATA_HOME": str(tmp_path / "data")}

    c = resolve(environ=env)
    assert (c.url, c.api_key, c.url_source) == ("http://127.0.0.1:8420", "admin-key", "default")
    # The local admin key never goes to another machine.
    assert resolve(url="https://fleet.example.com", environ=env).api_key is None

    cfg = tmp_path / "config" / "socialsync" / "client.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('url = "http://10.0.0.5:8420"\napi_key = "cfg-key"\n')
    c = resolve(environ=env)
    assert (c.url, c.api_key) == ("http://10.0.0.5:8420", "cfg-key")
    # The config file's key belongs to the config file's daemon.
    assert resolve(url="http://10.0.0.9:8420", environ=env).api_key is None
    assert resolve(url="127.0.0.1:8420", environ=env).api_key == "admin-key"

    env2 = {**env, "SOCIALSYNC_URL": "http://10.0.0.7:8420/", "SOCIALSYNC_API_KEY": "env-key"}
    c = resolve(environ=env2)
    assert (c.url, c.api_key, c.key_source) == ("http://10.0.0.7:8420", "env-key", "$SOCIALSYNC_API_KEY")
    key_file = tmp_path / "k"
    key_file.write_text("file-key\n")
    c = resolve(url="http://h:1", api_key_file=str(key_file), environ=env2)
    assert (c.url, c.api_key) == ("http://h:1", "file-key")
    assert resolve(api_key="flag-key", environ=env2).api_key == "flag-key"
    with pytest.raises(ConnectError):
        resolve(api_key_file=str(tmp_path / "nope"), environ=env)
    with pytest.raises(ConnectError):
        resolve(url="ftp://h", environ=env)
    cfg.write_text("not toml [")
    with pytest.raises(ConnectError):
        resolve(environ=env)


def test_table_and_progress_lines():
    assert table(("ID", "NAME"), [[1, "a"], [10, "bb"]], right=(0,)).splitlines() == [
        "ID  NAME", " 1  a", "10  bb"]
    err = io.StringIO()
    bar = ProgressBar(5, err)
    for p in (0, 4, 12, 19, 55, 100):
        bar.update(p, "processing")
    bar.finish({"status": "completed", "imageUrls": ["/x"], "durationMs": 1500})
    assert err.getvalue().splitlines() == [
        "generation 5: 0% processing", "generation 5: 10% processing", "generation 5: 50% processing",
        "generation 5: 100% processing", "generation 5 completed in 1.5 s: 1 image"]
