"""The database: SQLite through aiosqlite, WAL, foreign keys, numbered migrations.

One writer connection guarded by a lock (SQLite has one writer anyway; the lock keeps
one task's transaction from seeing another's half-done work), and one reader
connection that sees only committed data (WAL).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from socialsync.common.wire import now_iso

log = logging.getLogger(__name__)

MIGRATION_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def builtin_migrations() -> list[Migration]:
    folder = resources.files("socialsync.daemon.store.migrations")
    found = []
    for entry in folder.iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def migrations_from_dir(path: Path) -> list[Migration]:
    found = []
    for entry in sorted(path.iterdir()):
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return found


def split_statements(sql: str) -> list[str]:
    """Split a script into statements, so each runs inside our own transaction
    (``executescript`` would commit on its own and break atomicity)."""
    statements, current = [], ""
    for line in sql.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip() and not current.strip().startswith("--"):
        raise ValueError(f"incomplete SQL statement: {current.strip()[:60]!r}")
    return statements


T = TypeVar("T")


def _atomic(db: Database, batch: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[tuple[bool, Any]]:
    """On the writer's thread, in one call (one thread hop): BEGIN IMMEDIATE, each unit
    ``fn(conn, *args)`` in its own SAVEPOINT (a unit that raises is rolled back alone,
    and its caller gets the exception), COMMIT. Any failure outside a unit rolls back
    everything and fails every unit. Returns (ok, result or exception) per unit."""
    conn: sqlite3.Connection = db._writer._conn
    single = len(batch) == 1
    out: list[tuple[bool, Any]] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for fn, args in batch:
            if single:
                out.append((True, fn(conn, *args)))
                continue
            conn.execute("SAVEPOINT unit")
            try:
                result = fn(conn, *args)
            except Exception as exc:
                conn.execute("ROLLBACK TO unit")
                conn.execute("RELEASE unit")
                out.append((False, exc))
            else:
                conn.execute("RELEASE unit")
                out.append((True, result))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    # Counted here, on the writer's thread, right after the commit: even when a caller
    # was cancelled while waiting, the version never misses a committed write.
    db._commits += 1
    return out


class MigrationError(RuntimeError):
    pass


async def _connect(path: Path | str) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(str(path), isolation_level=None)
    conn.row_factory = aiosqlite.Row
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute("PRAGMA foreign_keys=ON")
    await conn.execute("PRAGMA synchronous=NORMAL")
    await conn.execute("PRAGMA busy_timeout=5000")
    return conn


class Database:
    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection):
        self._writer = writer
        self._reader = reader
        self._lock = asyncio.Lock()
        self._commits = 0
        self._pending: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None

    @classmethod
    async def open(cls, path: Path | str, migrations: Iterable[Migration] | None = None) -> Database:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(path)
        try:
            await apply_migrations(writer, builtin_migrations() if migrations is None else list(migrations))
            reader = await _connect(path)
        except BaseException:
            await writer.close()
            raise
        return cls(writer, reader)

    async def close(self) -> None:
        async with self._lock:
            await self._reader.close()
            try:
                await self._writer.execute("PRAGMA optimize")
            finally:
                await self._writer.close()

    # Reads see committed data only. Each read runs, fetches and closes its statement in
    # one call on the reader's thread: a cursor left open across an await would hold a
    # read transaction, and every overlapping read would then see that old snapshot.
    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        rows = await self._reader.execute_fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        return list(await self._reader.execute_fetchall(sql, params))

    async def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]

    @property
    def version(self) -> int:
        """Grows with every committed write transaction. Take it *before* a read: a
        result kept under that version is current as long as the version is unchanged
        (what a response cache needs)."""
        return self._commits

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction: everything inside commits together or not at all."""
        async with self._lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                await self._writer.execute("ROLLBACK")
                raise
            else:
                await self._writer.execute("COMMIT")
                self._commits += 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """One write transaction made of plain ``sqlite3`` calls: ``fn(conn, *args)`` runs
        on the writer's thread, all of it committed or none of it (ROLLBACK if it
        raises), under the same lock as `transaction`. Units submitted while the writer
        is busy are group-committed: one thread hop and one COMMIT for the lot, each
        unit in its own SAVEPOINT, run in the order they were submitted. ``fn`` must
        not block on anything but the database."""
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((fn, args, fut))
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())
        return await fut

    async def _flush(self) -> None:
        batch: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future]] = []
        try:
            while self._pending:
                async with self._lock:
                    batch, self._pending = self._pending, []
                    # aiosqlite runs queued calls in order on its one thread: a later
                    # transaction's BEGIN can never land inside this one.
                    try:
                        results = await self._writer._execute(_atomic, self, [(fn, args) for fn, args, _ in batch])
                    except Exception as exc:  # the whole batch was rolled back: each unit fails with it
                        results = [(False, exc)] * len(batch)
                for (_, _, fut), (ok, value) in zip(batch, results, strict=True):
                    if fut.done():
                        continue
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(value)
                batch = []
        except BaseException:  # cancelled (the loop is closing): nobody may wait forever
            for _, _, fut in [*batch, *self._pending]:
                if not fut.done():
                    fut.set_exception(ConnectionError("the database writer stopped"))
            self._pending = []
            raise
        finally:
            self._flusher = None

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """A single write statement in its own transaction; returns lastrowid."""
        return await self.run(_execute_one, sql, params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self.run(_execute_many, sql, list(rows))


def _execute_one(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    return conn.execute(sql, params).lastrowid or 0


def _execute_many(conn: sqlite3.Connection, sql: str, rows: list[Sequence[Any]]) -> None:
    conn.executemany(sql, rows)


async def apply_migrations(conn: aiosqlite.Connection, migrations: list[Migration]) -> list[int]:
    """Apply the migrations not yet recorded, each in its own transaction: one that
    fails is rolled back whole and stops the start, leaving the database as it was."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    async with conn.execute("SELECT version FROM schema_migrations") as cur:
        done = {row[0] for row in await cur.fetchall()}
    applied = []
    for migration in migrations:
        if migration.version in done:
            continue
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in split_statements(migration.sql):
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, now_iso()),
            )
        except Exception as exc:
            await conn.execute("ROLLBACK")
            raise MigrationError(f"migration {migration.version:03d}_{migration.name} failed: {exc}") from exc
        await conn.execute("COMMIT")
        log.info("migration applied version=%03d name=%s", migration.version, migration.name)
        applied.append(migration.version)
    return applied
