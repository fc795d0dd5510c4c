"""The ``models`` table (what each server has, as last seen) and ``model_downloads``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from socialsync.daemon.store.db import Database

ACTIVE = ("queued", "running")


async def replace_server_models(
    db: Database, server_id: int, folders: Iterable[str], files: Iterable[tuple[str, str, int | None]], seen_at: str
) -> None:
    """Replace what we know of ``folders`` on one server with ``files`` (folder, name, size)."""
    folders = list(folders)
    async with db.transaction() as conn:
        for folder in folders:
            await conn.execute("DELETE FROM models WHERE server_id = ? AND folder = ?", (server_id, folder))
        await conn.executemany(
            "INSERT OR REPLACE INTO models (server_id, folder, name, size, seen_at) VALUES (?, ?, ?, ?, ?)",
            [(server_id, folder, name, size, seen_at) for folder, name, size in files],
        )


async def server_models(db: Database, server_id: int):
    return await db.fetchall(
        "SELECT folder, name, size, seen_at FROM models WHERE server_id = ? ORDER BY folder, name", (server_id,)
    )


async def presence(db: Database):
    """Every model on a server that is not destroyed, with the server's name."""
    return await db.fetchall(
        "SELECT m.folder, m.name, m.size, m.server_id, s.name AS server_name FROM models m "
        "JOIN servers s ON s.id = m.server_id WHERE s.status != 'destroyed' ORDER BY m.folder, m.name, m.server_id"
    )


async def insert_download(db: Database, row: Mapping[str, Any]) -> int:
    columns = ", ".join(row)
    marks = ", ".join(f":{k}" for k in row)
    return await db.execute(f"INSERT INTO model_downloads ({columns}) VALUES ({marks})", row)


async def update_download(db: Database, download_id: int, fields: Mapping[str, Any]) -> None:
    sets = ", ".join(f"{k} = :{k}" for k in fields)
    await db.execute(f"UPDATE model_downloads SET {sets} WHERE id = :_id", {**fields, "_id": download_id})


async def get_download(db: Database, download_id: int):
    return await db.fetchone("SELECT * FROM model_downloads WHERE id = ?", (download_id,))


async def list_downloads(db: Database, server_id: int, limit: int = 100):
    return await db.fetchall(
        "SELECT * FROM model_downloads WHERE server_id = ? ORDER BY id DESC LIMIT ?", (server_id, limit)
    )


async def find_active(db: Database, server_id: int, folder: str, filename: str):
    return await db.fetchone(
        "SELECT * FROM model_downloads WHERE server_id = ? AND folder = ? AND filename = ? "
        "AND status IN ('queued', 'running') ORDER BY id DESC LIMIT 1",
        (server_id, folder, filename),
    )


async def fail_unfinished(db: Database, error: str, now: str) -> list[int]:
    """Downloads a previous run left queued or running (their tasks died with it)."""
    rows = await db.fetchall("SELECT id FROM model_downloads WHERE status IN ('queued', 'running')")
    if rows:
        await db.execute(
            "UPDATE model_downloads SET status = 'failed', error = ?, rate = NULL, updated_at = ? "
            "WHERE status IN ('queued', 'running')",
            (error, now),
        )
    return [r["id"] for r in rows]
