"""The servers table and its status history."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from socialsync.daemon.store.db import Database

LIVE = "status != 'destroyed'"


async def insert(db: Database, row: Mapping[str, Any]) -> int:
    columns = ", ".join(row)
    marks = ", ".join(f":{k}" for k in row)
    return await db.execute(f"INSERT INTO servers ({columns}) VALUES ({marks})", row)


async def get(db: Database, server_id: int):
    return await db.fetchone("SELECT * FROM servers WHERE id = ?", (server_id,))


async def by_label(db: Database, label: str):
    return await db.fetchone("SELECT * FROM servers WHERE label = ?", (label,))


async def list_all(db: Database, include_destroyed: bool = False):
    where = "" if include_destroyed else f" WHERE {LIVE}"
    return await db.fetchall(f"SELECT * FROM servers{where} ORDER BY id")


async def list_vast_live(db: Database):
    return await db.fetchall(f"SELECT * FROM servers WHERE kind = 'vast' AND {LIVE} ORDER BY id")


async def update(db: Database, server_id: int, fields: Mapping[str, Any], history: Mapping[str, Any] | None = None):
    """Change some columns; when ``history`` is given, append a status-history row in
    the same transaction so the two never disagree."""
    sets = ", ".join(f"{k} = :{k}" for k in fields)
    async with db.transaction() as conn:
        if fields:
            await conn.execute(f"UPDATE servers SET {sets} WHERE id = :_id", {**fields, "_id": server_id})
        if history is not None:
            await conn.execute(
                "INSERT INTO server_status_history (server_id, at, status, setup_status, reason) "
                "VALUES (?, ?, ?, ?, ?)",
                (server_id, history["at"], history["status"], history["setup_status"], history.get("reason")),
            )


async def insert_with_history(db: Database, row: Mapping[str, Any], reason: str | None) -> int:
    columns = ", ".join(row)
    marks = ", ".join(f":{k}" for k in row)
    async with db.transaction() as conn:
        cur = await conn.execute(f"INSERT INTO servers ({columns}) VALUES ({marks})", row)
        server_id = cur.lastrowid
        await conn.execute(
            "INSERT INTO server_status_history (server_id, at, status, setup_status, reason) VALUES (?, ?, ?, ?, ?)",
            (server_id, row["created_at"], row["status"], row["setup_status"], reason),
        )
    return server_id


async def delete(db: Database, server_id: int) -> None:
    async with db.transaction() as conn:
        await conn.execute("DELETE FROM server_status_history WHERE server_id = ?", (server_id,))
        await conn.execute("DELETE FROM servers WHERE id = ?", (server_id,))


async def history(db: Database, server_id: int, limit: int = 500):
    return await db.fetchall(
        "SELECT at, status, setup_status, reason FROM server_status_history WHERE server_id = ? "
        "ORDER BY id DESC LIMIT ?",
        (server_id, limit),
    )


async def install_id(db: Database) -> str:
    """A random id of this installation, so two daemons on one Vast account never take
    each other's instances for their own."""
    value = await db.scalar("SELECT value FROM meta WHERE key = 'install_id'")
    if value is None:
        value = secrets.token_hex(4)
        await db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('install_id', ?)", (value,))
        value = await db.scalar("SELECT value FROM meta WHERE key = 'install_id'")
    return value
