"""``socialsyncd``: the daemon's command line, and the process around the event loop:
signals, systemd notifications, the order of a shutdown and its deadline.

    socialsyncd [--config FILE] [--host HOST] [--port PORT] [--state-dir DIR] [--demo]
    socialsyncd user add NAME --role ROLE [--password-stdin]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import getpass
import inspect
import logging
import os
import signal
import sys
import tempfile
import threading
import traceback
import types
from functools import partial
from pathlib import Path

from aiohttp import web

from socialsync.common.auth import Role
from socialsync.daemon.app import create_app
from socialsync.daemon.errors import AppError
from socialsync.daemon.logs import setup_logging
from socialsync.daemon.services.auth import AuthService
from socialsync.daemon.settings import DEFAULT_PORT, Settings, load_settings
from socialsync.daemon.store.db import Database
from socialsync.daemon.systemd import Systemd

log = logging.getLogger("socialsync.daemon")

EXIT_OK = 0
EXIT_FAILURE = 1  # startup failed, or a resource failed to close
EXIT_SHUTDOWN_TIMEOUT = 1  # shutdown outlived settings.shutdown_timeout


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="socialsyncd", description="The SocialSync daemon.")
    p.add_argument("--config", type=Path, help="TOML settings file")
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help=f"listen port (default {DEFAULT_PORT})")
    p.add_argument("--state-dir", type=Path, help="where the database, images and admin key live")
    p.add_argument("--demo", action="store_true", default=None,
                   help="run against in-process Vast and ComfyUI simulators (no account needed)")
    sub = p.add_subparsers(dest="command")
    user = sub.add_parser("user", help="manage users").add_subparsers(dest="user_command", required=True)
    add = user.add_parser("add", help="create a user who can log in")
    add.add_argument("name")
    add.add_argument("--role", choices=[r.value for r in Role], default=Role.OPERATOR.value)
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    return p


class StopSignals:
    """SIGTERM and SIGINT ask for one graceful stop; repeats are logged, never raised.

    Plain ``signal.signal`` handlers rather than ``loop.add_signal_handler``, which
    restores the default handlers when the loop closes: a signal that arrives while the
    process is already exiting is ignored instead of killing it or raising
    ``KeyboardInterrupt`` (and ``run()`` ignores them altogether once the loop is done).
    """

    def __init__(self) -> None:
        self.count = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def attach(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        """The event set by the first signal (already set if one came before the loop)."""
        self._loop, self._event = loop, asyncio.Event()
        if self.count:
            self._event.set()
        return self._event

    def _handle(self, signum: int, frame: object) -> None:
        # Runs in the main thread between two bytecodes, possibly inside the loop's own
        # code: hand over to the loop, as asyncio's own SIGINT handler does.
        self.count += 1
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed in between
            loop.call_soon_threadsafe(self._on_loop, signal.Signals(signum).name, self.count)

    def _on_loop(self, name: str, count: int) -> None:
        if count == 1:
            log.info("stop requested signal=%s", name)
        else:
            log.info("already stopping signal=%s count=%d", name, count)
        assert self._event is not None
        self._event.set()


class ShutdownDeadline:
    """The last resort of a shutdown: past ``timeout`` seconds, log where the main thread
    is stuck and exit with ``code``. A thread, not a loop task, so that it fires when the
    loop is blocked too, or when a thread the interpreter waits for never ends."""

    def __init__(self, timeout: float, code: int = EXIT_SHUTDOWN_TIMEOUT):
        self.timeout = timeout
        self.code = code
        self._timer: threading.Timer | None = None
        self._main = threading.get_ident()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start counting; called from the event loop's thread."""
        if self._timer is None:
            self._main = threading.get_ident()
            self._loop = asyncio.get_running_loop()
            self._timer = threading.Timer(self.timeout, self._expire)
            self._timer.name = "shutdown-deadline"
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        # Report from yet another thread: if the main thread is stuck holding the log
        # handler's lock (a full stderr pipe), the report is lost but the exit is not.
        reporter = threading.Thread(target=self._report, name="shutdown-report", daemon=True)
        reporter.start()
        reporter.join(1.0)
        os._exit(self.code)

    def _report(self) -> None:
        log.critical("shutdown did not finish in time timeout=%gs exit_status=%d", self.timeout, self.code)
        frame = sys._current_frames().get(self._main)
        if frame is not None:
            log.error("main thread stuck at:\n%s", "".join(traceback.format_stack(frame)).rstrip())
        # And where the coroutines wait, when the loop itself is idle. Reading another
        # thread's tasks is racy, but this is the last thing the process does.
        try:
            tasks = [t for t in asyncio.all_tasks(self._loop) if not t.done()] if self._loop else []
            for task in tasks[:20]:
                stack = traceback.format_list(
                    [traceback.FrameSummary(f.f_code.co_filename, f.f_lineno, f.f_code.co_name)
                     for f in _awaiting(task.get_coro())])
                log.error("task stuck name=%s at:\n%s", task.get_name(), "".join(stack).rstrip())
        except Exception as exc:
            log.error("cannot list the tasks error=%r", exc)
        for handler in logging.getLogger().handlers:
            handler.flush()


def _awaiting(coro: object) -> list[types.FrameType]:
    """The frames of a suspended coroutine, outermost first, down the ``await`` chain
    (through ``anext(gen)``, which hides the async generator it drives: a cleanup_ctx)."""
    frames: list[types.FrameType] = []
    while coro is not None and len(frames) < 100:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            frames.append(frame)
        awaited = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
        if awaited is not None and frame is not None and type(awaited).__name__.startswith("async_generator_"):
            awaited = _suspended_asyncgen(frame) or awaited
        coro = awaited
    return frames


def _suspended_asyncgen(frame: types.FrameType) -> object | None:
    owner = frame.f_locals.get("self")
    for value in [*frame.f_locals.values(), *getattr(owner, "__dict__", {}).values()]:
        if inspect.isasyncgen(value) and value.ag_await is not None:
            return value
    return None


def request_grace(shutdown_timeout: float) -> float:
    """How long in-flight requests may take to finish after SIGTERM. aiohttp may spend
    it twice (wait, then cancel and wait), and the websocket close and the resources'
    cleanup need the rest of ``shutdown_timeout``."""
    return shutdown_timeout * 0.4


def _address(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr)


async def serve(settings: Settings, signals: StopSignals, deadline: ShutdownDeadline) -> int:
    """Listen until a stop signal, then shut down in order: stop accepting, close the
    websockets (``on_shutdown``), let in-flight requests finish, close every resource
    (``cleanup_ctx``). systemd hears READY=1 only once the socket listens."""
    stop = signals.attach(asyncio.get_running_loop())
    systemd = Systemd.from_environ()
    systemd.start_watchdog()  # before startup: migrations may take a while
    try:
        return await _serve(settings, stop, systemd, deadline)
    finally:
        await systemd.aclose()


async def _serve(settings: Settings, stop: asyncio.Event, systemd: Systemd, deadline: ShutdownDeadline) -> int:
    app = create_app(settings)
    app.on_response_prepare.append(partial(_close_when_stopping, stop))
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=request_grace(settings.shutdown_timeout),
                           access_log=None)
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
        await site.start()
    except OSError as exc:
        log.error("cannot listen host=%s port=%d error=%s", settings.host, settings.port, exc)
        systemd.notifier.status(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}")
        await _cleanup(runner)
        return EXIT_FAILURE
    except Exception:
        log.exception("startup failed")
        systemd.notifier.status("startup failed, see the log")
        await _cleanup(runner)
        return EXIT_FAILURE
    log.info("listening url=http://%s:%d state_dir=%s", settings.host, settings.port, settings.state_dir)
    # What start-up built (modules, models, settings) lives as long as the process: move it
    # out of the collector's sight, so a full collection walks only what requests create
    # (60-145 ms less per full collection here, a visible stall for every live client).
    gc.collect()
    gc.freeze()
    if settings.demo:
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        print(f"SocialSync demo daemon ready. Attach the console with:\n"
              f"  socialsync --url http://{host}:{settings.port} --api-key-file {settings.admin_key_path}",
              file=sys.stderr, flush=True)
    await systemd.ready(app, ", ".join(_address(a) for a in runner.addresses))

    await stop.wait()
    log.info("shutting down timeout=%gs", settings.shutdown_timeout)
    deadline.start()
    await systemd.stopping(timeout=settings.shutdown_timeout)
    if not await _cleanup(runner):
        return EXIT_FAILURE
    log.info("stopped")
    return EXIT_OK


async def _close_when_stopping(stop: asyncio.Event, request: web.Request, response: web.StreamResponse) -> None:
    """Once stopping, every response says ``Connection: close``: a client sends its next
    request on a new connection, which is refused, instead of on one about to close."""
    if stop.is_set():
        response.force_close()
        response.headers["Connection"] = "close"  # the hook runs after aiohttp has set its headers


async def _cleanup(runner: web.AppRunner) -> bool:
    try:
        await runner.cleanup()
    except Exception:
        log.exception("shutdown failed")
        return False
    return True


def run(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT, then exit. The signal handlers and the shutdown
    deadline belong to the process, so they are set up here, around the loop."""
    signals = StopSignals()
    signals.install()
    deadline = ShutdownDeadline(settings.shutdown_timeout)
    try:
        return asyncio.run(serve(settings, signals, deadline))
    finally:
        # The work is done; what is left is the interpreter's exit. Python puts the
        # default handlers back while it finalizes, so a late SIGTERM/SIGINT would kill
        # the process (exit -15/-2 instead of 0): ignore them from here on. The deadline
        # keeps running (a daemon thread) in case the exit waits for a stuck thread.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)


async def add_user(settings: Settings, name: str, role: Role, password: str) -> None:
    db = await Database.open(settings.db_path)
    try:
        await AuthService(db).add_user(name, password, role)
    finally:
        await db.close()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings(args.config, host=args.host, port=args.port, state_dir=args.state_dir,
                                 demo=args.demo)
    except (FileNotFoundError, ValueError) as exc:
        print(f"socialsyncd: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.secrets())
    demo_tmp = None
    if settings.demo and args.state_dir is None and args.command is None:
        # A demo keeps its state in a temporary directory unless told otherwise, and its
        # own runtime directory, so two demos never share an event socket.
        demo_tmp = tempfile.TemporaryDirectory(prefix="socialsyncd-demo-")
        settings.state_dir = Path(demo_tmp.name)
        settings.runtime_dir = settings.state_dir / "run"
    if args.command == "user":
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("Password: ")
        if not password:
            print("socialsyncd: empty password", file=sys.stderr)
            return 2
        try:
            asyncio.run(add_user(settings, args.name, Role(args.role), password))
        except AppError as exc:
            print(f"socialsyncd: {exc.message}: {exc.details}", file=sys.stderr)
            return 1
        print(f"user {args.name} added with role {args.role}")
        return 0
    try:
        return run(settings)
    finally:
        if demo_tmp is not None:
            demo_tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
