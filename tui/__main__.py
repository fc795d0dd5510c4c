"""``socialsync``: the operator's console (the TUI) and scriptable subcommands.

    socialsync [--url URL] [--api-key KEY | --api-key-file FILE]   the console
    socialsync demo                                                 a simulated fleet + the console
    socialsync servers|offers|generate|generations|events|keys|stats …   for scripts

``socialsync --help`` lists the commands, the exit statuses and how the daemon is found.
"""

from __future__ import annotations

import inspect
import sys

from socialsync.tui.cli import EXIT_INTERRUPTED, EXIT_USAGE, build_parser, run_command
from socialsync.tui.connect import ConnectError, resolve


def open_console(url: str, api_key: str | None, transport: str = "auto") -> int:
    """Run the TUI on the daemon at ``url`` until the operator quits; its exit status."""
    from socialsync.tui import app

    run_tui = getattr(app, "run_tui", None)
    if run_tui is not None:
        params = inspect.signature(run_tui).parameters
        kwargs = {"transport": transport} if "transport" in params or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) else {}
        status = run_tui(url, api_key, **kwargs)
    else:  # the console before run_tui(url, key) existed
        status = app.run([])
    return int(status or 0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "demo":
        from socialsync.tui.demo import run_demo

        return run_demo(args, None if args.headless else open_console)
    if args.command is not None:
        return run_command(args)
    try:
        conn = resolve(args.url, args.api_key, args.api_key_file)
    except ConnectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return open_console(conn.url, conn.api_key, args.transport)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
