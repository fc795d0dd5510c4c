"""Users, sessions and API keys. Only hashes are stored."""

from __future__ import annotations

from socialsync.daemon.store.db import Database


async def insert_user(db: Database, username: str, password_hash: str, role: str, at: str) -> int:
    return await db.execute(
        "INSERT INTO users (username, password_hash, role, created_at) VALUES (?, ?, ?, ?)",
        (username, password_hash, role, at),
    )


async def user_by_name(db: Database, username: str):
    return await db.fetchone("SELECT * FROM users WHERE username = ? AND disabled_at IS NULL", (username,))


async def insert_session(db: Database, token_hash: str, user_id: int, at: str, expires_at: str) -> int:
    return await db.execute(
        "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
        (token_hash, user_id, at, expires_at),
    )


async def session_by_hash(db: Database, token_hash: str, now: str):
    return await db.fetchone(
        "SELECT s.id AS session_id, u.id AS user_id, u.username, u.role FROM sessions s "
        "JOIN users u ON u.id = s.user_id "
        "WHERE s.token_hash = ? AND s.expires_at > ? AND u.disabled_at IS NULL",
        (token_hash, now),
    )


async def delete_session(db: Database, token_hash: str) -> None:
    await db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))


async def insert_key(
    db: Database, name: str, prefix: str, key_hash: str, role: str, at: str, created_by: str | None
) -> int:
    return await db.execute(
        "INSERT INTO api_keys (name, prefix, key_hash, role, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?)",
        (name, prefix, key_hash, role, at, created_by),
    )


async def key_by_hash(db: Database, key_hash: str):
    return await db.fetchone("SELECT * FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", (key_hash,))


async def key_by_id(db: Database, key_id: int):
    return await db.fetchone("SELECT * FROM api_keys WHERE id = ?", (key_id,))


async def list_keys(db: Database):
    return await db.fetchall("SELECT * FROM api_keys ORDER BY id")


async def revoke_key(db: Database, key_id: int, at: str) -> bool:
    async with db.transaction() as conn:
        cur = await conn.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (at, key_id)
        )
        return cur.rowcount > 0


async def touch_key(db: Database, key_id: int, at: str) -> None:
    await db.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (at, key_id))
