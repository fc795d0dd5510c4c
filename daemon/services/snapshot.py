"""The state a live client starts from: every server that is not destroyed and every
generation still queued or processing. Read-only; two queries on the reader
connection (which sees committed data only)."""

from __future__ import annotations

from typing import Any

from socialsync.daemon.services.fleet import to_wire
from socialsync.daemon.store.db import Database

ACTIVE_GENERATIONS = ("queued", "processing")

SERVERS_SQL = "SELECT * FROM servers WHERE status != 'destroyed' ORDER BY id"
GENERATIONS_SQL = (
    "SELECT id, server_id, status, progress, prompt, created_at FROM generations "
    "WHERE status IN ('queued', 'processing') ORDER BY id"
)


async def build_snapshot(db: Database) -> dict[str, Any]:
    """``{"servers": [Server…], "generations": [{id, serverId, status, progress, prompt,
    createdAt}…]}`` as JSON-ready data."""
    servers = await db.fetchall(SERVERS_SQL)
    generations = await db.fetchall(GENERATIONS_SQL)
    return {
        "servers": [to_wire(row).model_dump(mode="json", by_alias=True) for row in servers],
        "generations": [
            {
                "id": g["id"],
                "serverId": g["server_id"],
                "status": g["status"],
                "progress": g["progress"],
                "prompt": g["prompt"],
                "createdAt": g["created_at"],
            }
            for g in generations
        ],
    }
