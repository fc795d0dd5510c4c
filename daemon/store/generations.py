"""The generations table and the images each one produced.

Every state change after the insert is conditional on the row still being active
(``queued``/``processing``): whoever reaches a final state first wins, and a late
writer (a cancel racing a completion, a server failing while images download) is a
no-op. Pages are read through the ``(server_id, id DESC)``, ``(server_id, status, id
DESC)`` and ``(status, id)`` indexes: the inner query walks the index only. A deep page
(``offset`` ≥ ``DEEP_OFFSET``) first finds the block of 4096 ids it starts in from the
trigger-kept ``generation_blocks`` counts (migration 008), so it walks at most a block's
worth of index entries however deep it is, instead of the whole offset.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from socialsync.daemon.store.db import Database

ACTIVE = ("queued", "processing")
_ACTIVE_SQL = "status IN ('queued', 'processing')"

INSERT_COLUMNS = ("server_id", "workflow_id", "principal", "prompt", "negative_prompt", "parameters", "checkpoint",
                  "seed", "status", "progress", "steps", "queue_id", "priority", "attempts", "created_at")

# The page queries: the inner query walks one index only (newest first), then the
# rows of that page are fetched by id. ``{where}`` is built from fixed fragments.
_PAGE = ("SELECT * FROM generations WHERE id IN (SELECT id FROM generations {where} "
         "ORDER BY id DESC LIMIT ? OFFSET ?) ORDER BY id DESC")


def page_sql(*, server_id: bool, status: bool, before_id: bool) -> str:
    """The SQL of one page (exposed so a test can check its query plan)."""
    terms = [t for t, on in (("server_id = ?", server_id), ("status = ?", status), ("id < ?", before_id)) if on]
    return _PAGE.format(where="WHERE " + " AND ".join(terms) if terms else "")


BLOCK_BITS = 12  # generation_blocks count ids in blocks of 4096 (migration 008)
DEEP_OFFSET = 4 << BLOCK_BITS  # from this offset on (16384), a page starts from the block counts

# A deep page, one statement (one snapshot): ``b`` is the matching generations per
# block of ids (below ``:before_id``'s block, plus that block's part below it,
# counted on the index); ``s`` is the newest-first block where the page starts and how
# many matching rows the newer blocks hold; the page is then the ordinary one, from the
# top of that block with the rest of the offset. An offset past the end finds no block:
# ``id < NULL`` is never true, so the page is empty.
_DEEP_PAGE = """
WITH b(block, n) AS ({blocks}),
c AS (SELECT block, n, sum(n) OVER (ORDER BY block DESC) AS upto FROM b),
s AS (SELECT block, upto - n AS skipped FROM c WHERE upto > :offset ORDER BY block DESC LIMIT 1)
SELECT * FROM generations WHERE id IN (
    SELECT id FROM generations WHERE {where}id < {top}
    ORDER BY id DESC LIMIT :limit OFFSET coalesce((SELECT :offset - skipped FROM s), 0))
ORDER BY id DESC"""


def deep_page_sql(*, server_id: bool, status: bool, before_id: bool) -> str:
    """The SQL of a deep page, with named parameters ``:server_id``, ``:status``,
    ``:before_id``, ``:limit`` and ``:offset`` (those switched on): the same rows as
    ``page_sql``, whatever the offset."""
    match = [t for t, on in (("server_id = :server_id", server_id), ("status = :status", status)) if on]
    table = "generation_blocks" if server_id else "generation_blocks_all"
    counted = [*match, *([f"block < :before_id >> {BLOCK_BITS}"] if before_id else [])]
    blocks = f"SELECT block, sum(n) FROM {table} {_where(counted)} GROUP BY block"
    if before_id:  # the part of before_id's own block below it, counted on the index
        low = f"id >= (:before_id >> {BLOCK_BITS}) << {BLOCK_BITS}"
        blocks += (f" UNION ALL SELECT :before_id >> {BLOCK_BITS}, count(*) FROM generations "
                   f"{_where([*match, low, 'id < :before_id'])}")
    # One upper bound on id (two would leave the planner seeking on either of them).
    top = f"(SELECT (block + 1) << {BLOCK_BITS} FROM s)"
    if before_id:
        top = f"min(:before_id, {top})"
    return _DEEP_PAGE.format(blocks=blocks, where="".join(f"{t} AND " for t in match), top=top)


def _where(terms: list[str]) -> str:
    return "WHERE " + " AND ".join(terms) if terms else ""

_INSERT_SQL = (f"INSERT INTO generations ({', '.join(INSERT_COLUMNS)}) "
               f"VALUES ({', '.join(':' + k for k in INSERT_COLUMNS)})")


def _insert(conn, values: dict[str, Any], server_id: int | None, created_at: Any) -> int:
    cur = conn.execute(_INSERT_SQL, values)
    if server_id is not None:
        conn.execute("UPDATE servers SET last_activity_at = ? WHERE id = ?", (created_at, server_id))
    return cur.lastrowid or 0


async def insert(db: Database, row: Mapping[str, Any]) -> int:
    """Insert a generation and mark its server active (``last_activity_at``), together."""
    values = {k: row.get(k) for k in INSERT_COLUMNS}
    return await db.run(_insert, values, row.get("server_id"), row.get("created_at"))

async def get(db: Database, generation_id: int):
    return await db.fetchone("SELECT * FROM generations WHERE id = ?", (generation_id,))


async def page(db: Database, *, server_id: int | None, status: str | None, limit: int, offset: int,
               before_id: int | None = None):
    on = {"server_id": server_id is not None, "status": status is not None, "before_id": before_id is not None}
    if offset >= DEEP_OFFSET:
        named = {"server_id": server_id, "status": status, "before_id": before_id, "limit": limit, "offset": offset}
        return await db.fetchall(deep_page_sql(**on), {k: v for k, v in named.items() if v is not None})
    params = [p for p in (server_id, status, before_id) if p is not None]
    return await db.fetchall(page_sql(**on), (*params, limit, offset))

async def active(db: Database, server_id: int | None = None):
    if server_id is None:
        return await db.fetchall(f"SELECT * FROM generations WHERE {_ACTIVE_SQL} ORDER BY id")
    return await db.fetchall(
        f"SELECT * FROM generations WHERE server_id = ? AND {_ACTIVE_SQL} ORDER BY id", (server_id,))


async def count_active(db: Database, server_id: int) -> int:
    return await db.scalar(
        f"SELECT count(*) FROM generations WHERE server_id = ? AND {_ACTIVE_SQL}", (server_id,)) or 0


async def images_for(db: Database, generation_ids: Sequence[int]) -> dict[int, list[Any]]:
    """The image rows of some generations, in the order they were recorded."""
    found: dict[int, list[Any]] = {}
    ids = list(generation_ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ", ".join("?" * len(chunk))
        for row in await db.fetchall(
                f"SELECT * FROM generation_images WHERE generation_id IN ({marks}) ORDER BY generation_id, id", chunk):
            found.setdefault(row["generation_id"], []).append(row)
    return found


def _mark_processing(conn, generation_id: int, started_at: str) -> bool:
    cur = conn.execute(
        "UPDATE generations SET status = 'processing', started_at = coalesce(started_at, ?) "
        "WHERE id = ? AND status = 'queued'", (started_at, generation_id))
    return cur.rowcount > 0


async def mark_processing(db: Database, generation_id: int, started_at: str) -> bool:
    return await db.run(_mark_processing, generation_id, started_at)


async def set_progress(db: Database, generation_id: int, progress: int, step: int | None, steps: int | None) -> None:
    await db.execute(
        f"UPDATE generations SET progress = ?, step = ?, steps = coalesce(?, steps) WHERE id = ? AND {_ACTIVE_SQL}",
        (progress, step, steps, generation_id))


_DURATION = ("CAST(round((julianday(:at) - julianday(coalesce(started_at, created_at))) * 86400000) "
             "AS INTEGER)")


_FINISH_SQL = (
    f"UPDATE generations SET status = :status, error = :error, completed_at = :at, "
    f"started_at = coalesce(:started, started_at), duration_ms = coalesce(:duration, {_DURATION}), "
    f"progress = CASE WHEN :status = 'completed' THEN 100 ELSE progress END, "
    f"step = CASE WHEN :status = 'completed' AND steps IS NOT NULL THEN steps ELSE step END "
    f"WHERE id = :id AND {_ACTIVE_SQL} RETURNING server_id, duration_ms, webhook_url, principal, attempts, prompt")
_IMAGE_SQL = ("INSERT INTO generation_images (generation_id, node_id, filename, path, content_type, size, sha256, "
              "width, height, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


class FinishResult(NamedTuple):
    """What `finish` did, with the fields of the row its listeners need (so nothing
    reads the row again): all None when the row was no longer active."""

    changed: bool
    duration_ms: int | None = None
    webhook_url: str | None = None
    principal: str | None = None
    attempts: int | None = None
    prompt: str | None = None


_UNCHANGED = FinishResult(False)


def _finish(conn, generation_id: int, params: dict[str, Any], images: list[Mapping[str, Any]],
            completed_at: str) -> FinishResult:
    found = next(iter(conn.execute(_FINISH_SQL, params).fetchall()), None)
    if found is None:
        return _UNCHANGED
    if images:
        conn.executemany(_IMAGE_SQL, [
            (generation_id, image.get("node_id"), image["filename"], image["path"], image["content_type"],
             image["size"], image["sha256"], image.get("width"), image.get("height"), completed_at)
            for image in images])
    if found[0] is not None:
        conn.execute("UPDATE servers SET last_activity_at = ? WHERE id = ?", (completed_at, found[0]))
    return FinishResult(True, found[1], found[2], found[3], found[4], found[5])


async def finish(db: Database, generation_id: int, *, status: str, completed_at: str, error: str | None = None,
                 images: Iterable[Mapping[str, Any]] = (), timing: tuple[str, int] | None = None,
                 ) -> FinishResult:
    """Move an active row to a final state, with its images and the server's
    ``last_activity_at``, in one transaction. Returns (changed, duration_ms, and the
    row's webhook_url, principal, attempts, prompt); not changed when the row was no
    longer active (someone else finished it first).
    ``timing`` = (started_at, duration_ms) when known better than our own clock."""
    started, duration = timing if timing is not None else (None, None)
    params = {"status": status, "error": error, "at": completed_at, "id": generation_id, "started": started,
              "duration": duration}
    return await db.run(_finish, generation_id, params, list(images), completed_at)


async def recent_durations(db: Database, server_id: int, n: int = 20) -> list[int]:
    rows = await db.fetchall(
        "SELECT duration_ms FROM generations WHERE server_id = ? AND status = 'completed' "
        "ORDER BY id DESC LIMIT ?", (server_id, n))
    return [r[0] for r in rows if r[0] is not None]


async def image(db: Database, generation_id: int, index: int):
    return await db.fetchone(
        "SELECT * FROM generation_images WHERE generation_id = ? ORDER BY id LIMIT 1 OFFSET ?", (generation_id, index))

