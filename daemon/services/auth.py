"""API keys, users, sessions and roles.

Keys and session tokens are random, shown once, stored as SHA-256 (they carry 256 bits
of entropy, so a fast hash is the right one); passwords are stored with scrypt."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from socialsync.common.auth import ApiKey, ApiKeyCreated, Principal, Role
from socialsync.common.wire import iso, now_iso, utcnow
from socialsync.daemon.errors import Conflict, NotFound, Unauthorized
from socialsync.daemon.store import auth as auth_store
from socialsync.daemon.store.db import Database

log = logging.getLogger(__name__)

KEY_PREFIX = "ssk_"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
ADMIN_KEY_NAME = "local-admin"
KEY_CACHE_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Identity:
    """Who made a request, as the middleware resolved it."""

    kind: str  # "key" | "session" | "anonymous"
    name: str
    role: Role | None
    key_id: int | None = None
    user_id: int | None = None

    @property
    def rate_key(self) -> str:
        if self.kind == "key":
            return f"key:{self.key_id}"
        if self.kind == "session":
            return f"user:{self.user_id}"
        return f"addr:{self.name}"

    def principal(self) -> Principal:
        return Principal(
            kind=self.kind, name=self.name, role=self.role, key_id=self.key_id, user_id=self.user_id
        )


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str = KEY_PREFIX) -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# A hash to compare against when the user does not exist, so a wrong username costs
# as much time as a wrong password and the two cannot be told apart.
_DUMMY_HASH = hash_password(secrets.token_hex(8))


def _read_key_file(path: Path) -> str | None:
    if not path.is_file():
        return None
    os.chmod(path, 0o600)
    return path.read_text().strip() or None


def _write_key_file(path: Path, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    os.replace(tmp, path)


def _key_model(row) -> ApiKey:
    return ApiKey.model_validate(dict(row))


class AuthService:
    def __init__(self, db: Database, session_ttl_hours: float = 168.0):
        self.db = db
        self.session_ttl = timedelta(hours=session_ttl_hours)
        self._key_cache: dict[str, tuple[float, Identity]] = {}

    # -- API keys --------------------------------------------------------------------
    async def create_key(self, name: str, role: Role, created_by: str | None) -> ApiKeyCreated:
        key = new_token()
        key_id = await auth_store.insert_key(
            self.db, name, key[: len(KEY_PREFIX) + 6], hash_token(key), str(role), now_iso(), created_by
        )
        row = await auth_store.key_by_id(self.db, key_id)
        return ApiKeyCreated.model_validate({**dict(row), "key": key})

    async def list_keys(self) -> list[ApiKey]:
        return [_key_model(r) for r in await auth_store.list_keys(self.db)]

    async def revoke_key(self, key_id: int) -> ApiKey:
        row = await auth_store.key_by_id(self.db, key_id)
        if row is None:
            raise NotFound("API key not found", f"no API key with id {key_id}")
        if row["revoked_at"] is not None:
            raise Conflict("API key already revoked", f"key {key_id} was revoked at {row['revoked_at']}")
        await auth_store.revoke_key(self.db, key_id, now_iso())
        self._key_cache.clear()
        return _key_model(await auth_store.key_by_id(self.db, key_id))

    async def identify_key(self, key: str) -> Identity | None:
        digest = hash_token(key)
        cached = self._key_cache.get(digest)
        now = time.monotonic()
        if cached and cached[0] > now:
            return cached[1]
        row = await auth_store.key_by_hash(self.db, digest)
        if row is None:
            return None
        identity = Identity("key", row["name"], Role(row["role"]), key_id=row["id"])
        if len(self._key_cache) > 10_000:
            self._key_cache.clear()
        self._key_cache[digest] = (now + KEY_CACHE_SECONDS, identity)
        await auth_store.touch_key(self.db, row["id"], now_iso())
        return identity

    async def ensure_admin_key(self, path: Path) -> bool:
        """On first start, create an admin key and write it to ``path`` (mode 0600).
        Returns True when a new key was written. The key is never logged."""
        existing = await asyncio.to_thread(_read_key_file, path)
        if existing and await auth_store.key_by_hash(self.db, hash_token(existing)) is not None:
            return False
        created = await self.create_key(ADMIN_KEY_NAME, Role.ADMIN, created_by="system")
        await asyncio.to_thread(_write_key_file, path, created.key)
        log.info("admin key written path=%s key_id=%d", path, created.id)
        return True

    # -- users and sessions ----------------------------------------------------------
    async def add_user(self, username: str, password: str, role: Role) -> int:
        hashed = await asyncio.to_thread(hash_password, password)
        try:
            return await auth_store.insert_user(self.db, username, hashed, str(role), now_iso())
        except sqlite3.IntegrityError as exc:
            raise Conflict("User already exists", f"a user named {username!r} exists") from exc

    async def login(self, username: str, password: str) -> tuple[str, Identity]:
        row = await auth_store.user_by_name(self.db, username)
        stored = row["password_hash"] if row is not None else _DUMMY_HASH
        ok = await asyncio.to_thread(verify_password, password, stored)
        if row is None or not ok:
            raise Unauthorized("Invalid username or password", code="INVALID_CREDENTIALS")
        token = secrets.token_urlsafe(32)
        expires = iso(utcnow() + self.session_ttl)
        await auth_store.insert_session(self.db, hash_token(token), row["id"], now_iso(), expires)
        return token, Identity("session", row["username"], Role(row["role"]), user_id=row["id"])

    async def identify_session(self, token: str) -> Identity | None:
        row = await auth_store.session_by_hash(self.db, hash_token(token), now_iso())
        if row is None:
            return None
        return Identity("session", row["username"], Role(row["role"]), user_id=row["user_id"])

    async def logout(self, token: str) -> None:
        await auth_store.delete_session(self.db, hash_token(token))
