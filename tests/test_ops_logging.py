"""Logging as an operator reads it: journald's priority prefixes and no timestamps when
journald holds stderr, key=value context, and never a secret, even at DEBUG."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys

import aiohttp
from ops_daemon import NO_LIMITS, DaemonProcess, clean_env, daemon_command

from socialsync.daemon.logs import JournalFormatter, SecretFilter
from socialsync.daemon.sim.vast import ManualClock, VastSim

VAST_KEY = "vastsecret-4b1d6f0e9a7c4e21b3d5f7a9c1e3b5d7"
COMFY_TOKEN = "comfytoken-8e2c4a6b0d1f3e5a7c9b2d4f6a8c0e1b"
COMFY_PASSWORD = "comfypass-Zq7!Xv3#Lm9-Rt2"
USER_PASSWORD = "operator-pw-Hk4Jd8Ws1"
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}")  # logging's %(asctime)s
PREFIX = re.compile(r"^<([0-7])>")


def stream_id(path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


async def test_no_secret_reaches_the_log_at_debug(tmp_path):
    async with VastSim(api_key=VAST_KEY, clock=ManualClock()) as sim:
        vast_url = sim.base_url
        env = {
            **NO_LIMITS,
            "SOCIALSYNC_LOG_LEVEL": "DEBUG",
            "SOCIALSYNC_VAST__API_KEY": VAST_KEY,
            "SOCIALSYNC_VAST__BASE_URL": vast_url,
            "SOCIALSYNC_COMFY__TOKEN": COMFY_TOKEN,
            "SOCIALSYNC_COMFY__PASSWORD": COMFY_PASSWORD,
        }
        user_add = subprocess.run(
            [*daemon_command(), "--state-dir", str(tmp_path / "state"), "user", "add", "olga", "--role",
             "operator", "--password-stdin"],
            input=USER_PASSWORD + "\n", capture_output=True, text=True, env=clean_env(**env),
            timeout=60,
        )
        assert user_add.returncode == 0, user_add.stderr
        secrets = {"vast key": VAST_KEY, "comfy token": COMFY_TOKEN, "comfy password": COMFY_PASSWORD,
                   "user password": USER_PASSWORD}

        with DaemonProcess(tmp_path, env=env) as d:
            d.wait_listening()
            secrets["admin key"] = admin = d.admin_key
            base, bearer = d.base_url, {"Authorization": f"Bearer {admin}"}
            async with aiohttp.ClientSession(base) as s:
                async with s.post("/api/api-keys", json={"name": "ci", "role": "operator"}, headers=bearer) as r:
                    assert r.status == 201
                    secrets["created key"] = created = (await r.json())["key"]
                async with s.get("/api/auth/me", headers={"X-API-Key": created}) as r:
                    assert r.status == 200
                async with s.post("/api/auth/login", json={"username": "olga", "password": USER_PASSWORD}) as r:
                    assert r.status == 200
                    secrets["session cookie"] = r.cookies["socialsync_session"].value
                # Failures, with secrets where they do not belong.
                async with s.post("/api/auth/login", json={"username": "olga", "password": COMFY_PASSWORD}) as r:
                    assert r.status == 401
                async with s.get("/api/auth/me", headers={"Authorization": f"Bearer {VAST_KEY}"}) as r:
                    assert r.status == 401
                async with s.get("/api/auth/me", headers={"X-API-Key": COMFY_TOKEN}) as r:
                    assert r.status == 401
                async with s.get(f"/api/vast-servers?api_key={VAST_KEY}&token={admin}", headers=bearer) as r:
                    assert r.status < 500
                async with s.get(f"/api/nowhere/{COMFY_TOKEN}", headers=bearer) as r:
                    assert r.status == 404
                async with s.post("/api/api-keys", data=f'{{"name": "{COMFY_PASSWORD}', headers=bearer) as r:
                    assert r.status == 400
                async with s.get("/api/vast-offers", headers=bearer) as r:
                    assert r.status < 500  # the daemon called the Vast sim with its key
                async with s.ws_connect(f"/ws?token={created}") as ws:
                    await ws.close()
            # Requests so broken that aiohttp's parser, not our code, rejects them, and
            # logs the offending bytes: configured secrets, our keys, a session cookie.
            cookie = secrets["session cookie"]
            for bad in (f"GET /?k={VAST_KEY} HTTP/1.1\r\nHost: x\r\nContent-Length: {COMFY_PASSWORD}\r\n",
                        f"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\x01\r\n",
                        f"GET / HTTP/1.1\r\nHost: x\r\nX-API-Key: {created}\x7f\r\n",
                        f"GET / HTTP/1.1\r\nHost: x\r\nCookie: socialsync_session={cookie}\x00\r\n",
                        f"GET /?token={created}&x=\x01 HTTP/1.1\r\nHost: x\r\n"):
                with socket.create_connection(("127.0.0.1", d.port), timeout=5) as raw:
                    raw.sendall((bad + "\r\n").encode())
                    assert b" 400 " in raw.recv(4096).split(b"\r\n")[0]
            d.signal(signal.SIGTERM)
            assert d.wait(15) == 0
        # The daemon did use its Vast key (so there was something to leak).
        assert any(VAST_KEY in (r.headers.get("Authorization", "") + str(r.query)) for r in sim.requests)

    err = d.stderr() + user_add.stderr + user_add.stdout
    assert " DEBUG " in err, "the daemon did not log at DEBUG"
    leaks = {name: err.count(value) for name, value in secrets.items() if value in err}
    assert not leaks, f"secrets in the log: {leaks}"


def test_journald_gets_priorities_and_no_timestamps(tmp_path):
    """With JOURNAL_STREAM naming its stderr, every line carries a syslog priority prefix
    (<7> debug, <6> info, <4> warning) and no timestamp: journald adds its own."""
    stderr = tmp_path / "journal.log"
    stderr.touch()
    env = {"JOURNAL_STREAM": stream_id(stderr), "SOCIALSYNC_LOG_LEVEL": "DEBUG",
           "NOTIFY_SOCKET": "vsock:2:9"}  # not understood: one warning
    with DaemonProcess(tmp_path, env=env, stderr=stderr) as d:
        d.wait_listening()
        d.signal(signal.SIGTERM)
        assert d.wait(15) == 0
    lines = d.stderr().splitlines()
    assert lines
    for line in lines:
        assert PREFIX.match(line), line
        assert not TIMESTAMP.search(line), line
    priorities = {PREFIX.match(line).group(1) for line in lines}
    assert {"7", "6", "4"} <= priorities, priorities
    listening = next(line for line in lines if " listening " in line)
    assert listening == (f"<6>socialsync.daemon: listening url=http://127.0.0.1:{d.port} "
                         f"state_dir={d.state_dir}")
    assert any(line.startswith("<4>") and "NOTIFY_SOCKET" in line for line in lines)


def test_terminal_gets_timestamps_when_journald_holds_another_stream(tmp_path):
    other = tmp_path / "other"
    other.touch()
    with DaemonProcess(tmp_path, env={"JOURNAL_STREAM": stream_id(other)}) as d:
        d.wait_listening()
        d.signal(signal.SIGTERM)
        assert d.wait(15) == 0
    lines = d.stderr().splitlines()
    assert lines and all(TIMESTAMP.match(line) and not PREFIX.match(line) for line in lines), lines


def test_journal_format_prefixes_every_line_of_a_traceback():
    formatter = JournalFormatter("%(name)s: %(message)s")
    scrub = SecretFilter([VAST_KEY])
    try:
        raise RuntimeError(f"call failed url=https://console.vast.ai/api/v0/instances/?api_key={VAST_KEY}")
    except RuntimeError:
        record = logging.LogRecord("socialsync.daemon.vast", logging.ERROR, __file__, 1,
                                   "sync failed key=%s", (VAST_KEY,), sys.exc_info())
    assert scrub.filter(record)
    text = formatter.format(record)
    lines = text.splitlines()
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines), text
    assert VAST_KEY not in text and "[redacted]" in text


def test_scrub_keeps_what_identifies_and_drops_what_authenticates():
    from socialsync.daemon.logs import scrub

    key = "ssk_rGDjPjorExEzchpkKlfEqiYGCX24wXSQNzUUniLxomE"
    assert scrub(f"key_id=3 prefix={key[:10]}") == f"key_id=3 prefix={key[:10]}"  # the prefix is not the key
    assert scrub(f"got {key}!") == "got ssk_[redacted]!"
    assert scrub("b'Authorization: Bearer abc.def'") == "b'Authorization: Bearer [redacted]'"
    assert scrub("X-API-Key: k1 k2") == "X-API-Key: [redacted]"
    assert scrub("GET /ws?since=4&token=abc HTTP/1.1") == "GET /ws?since=4&token=[redacted] HTTP/1.1"
    assert scrub('{"username": "olga", "password": "pw"}') == '{"username": "olga", "password": "[redacted]"}'
    assert scrub("url=https://x/api/v0/instances/?api_key=v1") == "url=https://x/api/v0/instances/?api_key=[redacted]"
    assert scrub("csrf_token=keep password_hash=keep", ["zz"]) == "csrf_token=keep password_hash=keep"
    assert scrub("vast key is s3cr3t", ["s3cr3t"]) == "vast key is [redacted]"


def test_a_malformed_request_is_one_warning_line_not_a_traceback(tmp_path):
    """A client that sends a broken header gets its 400; the operator's log gets one
    WARNING naming the client, not an ERROR with aiohttp's parser traceback."""
    with DaemonProcess(tmp_path) as d:
        d.wait_listening()
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as sock:
            sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n")
            answer = sock.recv(4096)
        assert answer.split(b" ", 2)[1] == b"400", answer[:80]
        d.signal(signal.SIGTERM)
        assert d.wait(15) == 0
    err = d.stderr()
    assert "Traceback" not in err and " ERROR " not in err, err
    warning = next(line for line in err.splitlines() if "malformed HTTP request" in line)
    assert " WARNING aiohttp.server: malformed HTTP request from 127.0.0.1: " in warning
