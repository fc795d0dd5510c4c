"""``socialsyncd``: the daemon's command line.

    socialsyncd [--config FILE] [--host HOST] [--port PORT] [--state-dir DIR] [--demo]
    socialsyncd user add NAME --role ROLE [--password-stdin]
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from socialsync.common.auth import Role
from socialsync.daemon.app import create_app
from socialsync.daemon.errors import AppError
from socialsync.daemon.logs import setup_logging
from socialsync.daemon.services.auth import AuthService
from socialsync.daemon.settings import DEFAULT_PORT, Settings, load_settings
from socialsync.daemon.store.db import Database

log = logging.getLogger("socialsync.daemon")


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


async def serve(settings: Settings) -> int:
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=settings.shutdown_timeout,
                           access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
        await site.start()
        log.info("listening url=http://%s:%d state_dir=%s", settings.host, settings.port, settings.state_dir)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()
    log.info("stopped")
    return 0


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
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
