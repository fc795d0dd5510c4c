"""``socialsync demo`` end to end: a real child daemon, two servers launched through the
API, and no daemon left behind however the demo ends."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from decimal import Decimal

import pytest
from cli_helpers import CLI, FAST_DEMO_ENV, clean_env, pid_alive, run_cli, stop_process, wait_until

from socialsync.tui import demo as demo_mod
from socialsync.tui.cli import build_parser

pytestmark = pytest.mark.timeout(180)


def api(url: str, key: str, path: str) -> object:
    import urllib.request

    req = urllib.request.Request(url + path, headers={"X-API-Key": key})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_demo_headless_runs_a_daemon_with_two_servers_and_ctrl_c_stops_it(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = clean_env(tmp_path, TMPDIR=str(tmp), **FAST_DEMO_ENV)
    # Its own session, as a shell job is: Ctrl-C in a terminal signals the foreground
    # process group, which is the demo's and not its daemon's.
    demo = subprocess.Popen([*CLI, "demo", "--headless", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env=env, start_new_session=True)
    daemon_pid = None
    try:
        line = demo.stdout.readline()
        assert line, demo.stderr.read()
        info = json.loads(line)
        daemon_pid = info["pid"]
        assert pid_alive(daemon_pid)
        assert os.getpgid(daemon_pid) == daemon_pid != os.getpgid(demo.pid)  # its own process group
        assert info["stateDir"].startswith(str(tmp))

        key = open(info["apiKeyFile"]).read().strip()
        servers = api(info["url"], key, "/api/vast-servers")
        assert sorted(s["name"] for s in servers) == ["demo-1", "demo-2"]
        assert {s["id"] for s in servers} == {s["id"] for s in info["servers"]}
        # The cheapest offers: every offer still for rent costs at least as much.
        cheapest_left = api(info["url"], key, "/api/vast-offers?order=price&limit=1")[0]
        assert max(Decimal(s["pricePerHour"]) for s in info["servers"]) <= Decimal(cheapest_left["pricePerHour"])

        # The printed attach command works as it is.
        attach = shlex.split(info["attach"])
        assert attach[0] == "socialsync"
        r = run_cli(*attach[1:], "servers", "list", "--json", env=clean_env(tmp_path))
        assert r.returncode == 0, r.stderr
        assert {s["id"] for s in json.loads(r.stdout)} == {s["id"] for s in servers}

        os.killpg(demo.pid, signal.SIGINT)
        _, err = demo.communicate(timeout=60)
        assert demo.returncode == 130, err
        assert "demo stopped" in err
        assert not pid_alive(daemon_pid)
        assert list(tmp.iterdir()) == []  # its temporary state, and the daemon's own, are gone
    finally:
        stop_process(demo)
        if daemon_pid is not None and pid_alive(daemon_pid):
            os.kill(daemon_pid, signal.SIGKILL)


def test_demo_stops_its_daemon_when_the_console_crashes(tmp_path, monkeypatch):
    """The console is the TUI in real use; here one that checks the demo, then crashes."""
    for name, value in FAST_DEMO_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    spawned: list[demo_mod.DemoDaemon] = []
    real_spawn = demo_mod.spawn_daemon

    def spawn(*args):
        spawned.append(real_spawn(*args))
        return spawned[-1]

    monkeypatch.setattr(demo_mod, "spawn_daemon", spawn)
    seen = {}

    def console(url: str, key: str, transport: str) -> int:
        seen["servers"] = api(url, key, "/api/vast-servers")
        seen["transport"] = transport
        raise RuntimeError("the console crashed")

    args = build_parser().parse_args(["demo", "--transport", "ws"])
    try:
        with pytest.raises(RuntimeError, match="console crashed"):
            demo_mod.run_demo(args, console)
        (daemon,) = spawned
        assert len(seen["servers"]) == 2 and seen["transport"] == "ws"
        assert daemon.proc.returncode == 0  # stopped in order: SIGTERM, a clean exit
        assert not pid_alive(daemon.proc.pid)
        assert not daemon.root.exists()
    finally:
        for d in spawned:
            stop_process(d.proc)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_demo_child_dies_with_a_killed_parent(tmp_path):
    """SIGKILL leaves the demo no chance to stop its daemon: the kernel does it. The
    daemon is started through ``daemon_command``'s stub; here the stub execs a sleep
    (the same mechanism, without a daemon's start-up)."""
    parent_code = (
        "import os, subprocess, sys, time\n"
        "from socialsync.tui.demo import DIE_WITH_PARENT\n"
        "child = subprocess.Popen([sys.executable, '-S', '-c', DIE_WITH_PARENT, str(os.getpid()),"
        " '/bin/sleep', '120'], start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True,
                              env=clean_env(tmp_path))
    child_pid = None
    try:
        child_pid = int(parent.stdout.readline())
        wait_until(lambda: open(f"/proc/{child_pid}/cmdline").read().startswith("/bin/sleep"), timeout=30)
        parent.kill()
        parent.wait()
        wait_until(lambda: not pid_alive(child_pid), timeout=30)
    finally:
        stop_process(parent)
        if child_pid is not None and pid_alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)
