"""``socialsync``: the operator's console (the TUI) and scriptable subcommands."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from socialsync.tui.app import run

    return run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
