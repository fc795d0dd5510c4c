"""What import-linter cannot express: common/ never imports aiohttp's server side
(import-linter refuses sub-packages of external packages in a contract)."""

from __future__ import annotations

import ast
from pathlib import Path

COMMON = Path(__file__).resolve().parent.parent / "common"


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_common_never_imports_the_aiohttp_server():
    offenders = {
        str(path.relative_to(COMMON.parent)): sorted(m for m in imported_modules(path) if m.startswith("aiohttp.web"))
        for path in COMMON.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    assert len(offenders) >= 8  # the scan saw the package
