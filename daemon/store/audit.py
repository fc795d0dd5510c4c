"""The audit log table."""

from __future__ import annotations

from typing import Any

from socialsync.daemon.store.db import Database

COLUMNS = "id, at, actor, action, target_type, target_id, outcome, client_addr, request_id, details"


async def insert(db: Database, row: dict[str, Any]) -> int:
    return await db.execute(
        "INSERT INTO audit_logs (at, actor, action, target_type, target_id, outcome, client_addr, "
        "request_id, details) VALUES (:at, :actor, :action, :target_type, :target_id, :outcome, "
        ":client_addr, :request_id, :details)",
        row,
    )


async def query(db: Database, filters: dict[str, Any], limit: int, offset: int):
    where, params = [], []
    for column in ("action", "actor", "target_type", "target_id", "outcome"):
        if filters.get(column) is not None:
            where.append(f"{column} = ?")
            params.append(filters[column])
    if filters.get("since") is not None:
        where.append("at >= ?")
        params.append(filters["since"])
    if filters.get("until") is not None:
        where.append("at < ?")
        params.append(filters["until"])
    sql = f"SELECT {COLUMNS} FROM audit_logs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
    return await db.fetchall(sql, (*params, limit, offset))
