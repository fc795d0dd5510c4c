"""The workflows table: a name, an API-format graph and its parameter mapping (JSON text)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from socialsync.daemon.store.db import Database

COLUMNS = ("name", "description", "graph", "mapping", "created_at", "updated_at")


async def insert(db: Database, row: Mapping[str, Any]) -> int:
    values = {k: row[k] for k in COLUMNS}
    return await db.execute(
        f"INSERT INTO workflows ({', '.join(COLUMNS)}) VALUES ({', '.join(':' + k for k in COLUMNS)})", values)


async def get(db: Database, workflow_id: int):
    return await db.fetchone("SELECT * FROM workflows WHERE id = ?", (workflow_id,))


async def list_all(db: Database, limit: int = 1000):
    return await db.fetchall("SELECT * FROM workflows ORDER BY id LIMIT ?", (limit,))


async def update(db: Database, workflow_id: int, fields: Mapping[str, Any]) -> bool:
    fields = {k: v for k, v in fields.items() if k in COLUMNS}
    if not fields:
        return True
    sets = ", ".join(f"{k} = :{k}" for k in fields)
    async with db.transaction() as conn:
        cur = await conn.execute(f"UPDATE workflows SET {sets} WHERE id = :_id", {**fields, "_id": workflow_id})
        return cur.rowcount > 0


async def delete(db: Database, workflow_id: int) -> bool:
    async with db.transaction() as conn:
        cur = await conn.execute("DELETE FROM workflows WHERE id = ?", (workflow_id,))
        return cur.rowcount > 0
