"""Wire models of authentication: API keys, sessions, users, roles."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from socialsync.common.wire import RequestModel, WireModel


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return {"viewer": 0, "operator": 1, "admin": 2}[self.value]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


class ApiKeyCreate(RequestModel):
    name: str = Field(min_length=1, max_length=100)
    role: Role = Role.OPERATOR


class ApiKey(WireModel):
    id: int
    name: str
    prefix: str = Field(description="The first characters of the key, to recognise it; never the key.")
    role: Role
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    created_by: str | None = None


class ApiKeyCreated(ApiKey):
    key: str = Field(description="The key itself. Shown once, never stored in clear.")


class LoginRequest(RequestModel):
    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=1000)


class Principal(WireModel):
    kind: str = Field(description="'key', 'session' or 'anonymous'")
    name: str
    role: Role | None = None
    key_id: int | None = None
    user_id: int | None = None


class Me(WireModel):
    success: bool = True
    principal: Principal


class MessageResponse(WireModel):
    success: bool = True
    message: str
