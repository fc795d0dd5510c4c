"""The queue of scheduled generations and the webhook deliveries (migration 007).

Every write is conditional on the row still being where the caller thinks it is: an
assign only takes a row that is still waiting, a hand-back only a row still active, so
a cancel racing a dispatch (or a completion racing a server's death) resolves to one
winner.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from socialsync.daemon.store.db import Database

_ACTIVE_SQL = "status IN ('queued', 'processing')"
_WAITING_SQL = "status = 'queued' AND server_id IS NULL AND scheduled = 1"


async def enqueue(db: Database, row: Mapping[str, Any], cap: int | None = None) -> int | None:
    """Insert a waiting generation; None when the principal already has ``cap`` waiting."""
    async with db.transaction() as conn:
        if cap is not None:
            rows = await conn.execute_fetchall(
                f"SELECT count(*) FROM generations WHERE principal IS ? AND {_WAITING_SQL}", (row["principal"],))
            if next(iter(rows))[0] >= cap:
                return None
        columns = list(row)
        cur = await conn.execute(
            f"INSERT INTO generations ({', '.join(columns)}, scheduled, attempts, server_id) "
            f"VALUES ({', '.join(':' + c for c in columns)}, 1, 0, NULL)", dict(row))
        return cur.lastrowid or 0


async def waiting(db: Database):
    """Every waiting scheduled generation (the queue after a restart)."""
    return await db.fetchall(
        f"SELECT id, principal, priority, request, checkpoint, attempts, created_at FROM generations "
        f"WHERE {_WAITING_SQL} ORDER BY id")


async def assign(db: Database, generation_id: int, server_id: int, fields: Mapping[str, Any],
                 dispatch_seq: int | None, now: str) -> bool:
    """Give a waiting row to a server (one more attempt); False when it is no longer waiting."""
    values = {**fields, "_id": generation_id, "_server": server_id, "_seq": dispatch_seq, "_now": now}
    sets = "".join(f", {k} = :{k}" for k in fields)
    async with db.transaction() as conn:
        cur = await conn.execute(
            f"UPDATE generations SET server_id = :_server, attempts = attempts + 1, "
            f"dispatch_seq = coalesce(:_seq, dispatch_seq){sets} WHERE id = :_id AND {_WAITING_SQL}", values)
        if cur.rowcount:
            await conn.execute("UPDATE servers SET last_activity_at = :_now WHERE id = :_server", values)
        return cur.rowcount > 0


async def hand_back(db: Database, generation_id: int, attempt_log: list[dict[str, Any]]) -> bool:
    """An active scheduled row back into the queue, its attempt recorded."""
    async with db.transaction() as conn:
        cur = await conn.execute(
            f"UPDATE generations SET status = 'queued', server_id = NULL, queue_id = NULL, progress = 0, "
            f"step = NULL, started_at = NULL, attempt_log = ? WHERE id = ? AND scheduled = 1 AND {_ACTIVE_SQL}",
            (orjson.dumps(attempt_log).decode(), generation_id))
        return cur.rowcount > 0


async def set_attempt_log(db: Database, generation_id: int, attempt_log: list[dict[str, Any]]) -> None:
    await db.execute("UPDATE generations SET attempt_log = ? WHERE id = ?",
                     (orjson.dumps(attempt_log).decode(), generation_id))


async def active_by_server(db: Database) -> dict[int, set[int]]:
    """Active generation ids per server (what sits in each ComfyUI queue)."""
    found: dict[int, set[int]] = {}
    for row in await db.fetchall(
            f"SELECT server_id, id FROM generations WHERE {_ACTIVE_SQL} AND server_id IS NOT NULL"):
        found.setdefault(row[0], set()).add(row[1])
    return found


async def last_checkpoints(db: Database) -> dict[int, str]:
    rows = await db.fetchall(
        "SELECT server_id, checkpoint FROM generations WHERE id IN "
        "(SELECT max(id) FROM generations WHERE server_id IS NOT NULL AND checkpoint IS NOT NULL "
        "GROUP BY server_id)")
    return {r[0]: r[1] for r in rows}


async def max_dispatch_seq(db: Database) -> int:
    return await db.scalar("SELECT coalesce(max(dispatch_seq), 0) FROM generations") or 0


async def model_presence(db: Database) -> dict[int, set[tuple[str, str]]]:
    """(folder, name) of every model per server, from the models service's last look."""
    found: dict[int, set[tuple[str, str]]] = {}
    for row in await db.fetchall("SELECT server_id, folder, name FROM models"):
        found.setdefault(row[0], set()).add((row[1], row[2]))
    return found


# ------------------------------------------------------------------ webhook deliveries

async def insert_delivery(db: Database, row: Mapping[str, Any]) -> int:
    columns = list(row)
    return await db.execute(
        f"INSERT INTO webhook_deliveries ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})",
        dict(row))


async def update_delivery(db: Database, delivery_id: int, fields: Mapping[str, Any]) -> None:
    sets = ", ".join(f"{k} = :{k}" for k in fields)
    await db.execute(f"UPDATE webhook_deliveries SET {sets} WHERE id = :_id", {**fields, "_id": delivery_id})


async def get_delivery(db: Database, delivery_id: int):
    return await db.fetchone("SELECT * FROM webhook_deliveries WHERE id = ?", (delivery_id,))


async def deliveries(db: Database, *, status: str | None, limit: int, before_id: int | None = None):
    terms, params = [], []
    if status is not None:
        terms.append("status = ?")
        params.append(status)
    if before_id is not None:
        terms.append("id < ?")
        params.append(before_id)
    where = f"WHERE {' AND '.join(terms)}" if terms else ""
    return await db.fetchall(f"SELECT * FROM webhook_deliveries {where} ORDER BY id DESC LIMIT ?", (*params, limit))


async def pending_deliveries(db: Database):
    return await db.fetchall("SELECT * FROM webhook_deliveries WHERE status = 'pending' ORDER BY id")
