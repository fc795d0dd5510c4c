"""The audit trail: one row per mutating request and per automatic action, secrets
redacted, each row also published as an ``audit`` event."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

import orjson

from socialsync.common.audit import AuditEntry, AuditQuery, Outcome
from socialsync.common.events import AUDIT
from socialsync.common.wire import iso, now_iso
from socialsync.daemon.events import EventBus
from socialsync.daemon.store import audit as audit_store
from socialsync.daemon.store.db import Database

log = logging.getLogger(__name__)

SECRET_KEY = re.compile(r"pass(word)?|secret|token|api[-_]?key|authorization|cookie|^key$", re.I)
REDACTED = "[redacted]"
SYSTEM = "system"


def redact(value: Any, secrets: Iterable[str] = ()) -> Any:
    """Drop values under secret-looking keys and scrub known secret strings anywhere."""
    secrets = [s for s in secrets if s]
    if isinstance(value, dict):
        return {
            k: REDACTED if SECRET_KEY.search(str(k)) else redact(v, secrets) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v, secrets) for v in value]
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    return value


class AuditService:
    def __init__(self, db: Database, bus: EventBus, secrets: Iterable[str] = ()):
        self.db = db
        self.bus = bus
        self._secrets = list(secrets)

    def add_secret(self, secret: str) -> None:
        if secret:
            self._secrets.append(secret)

    async def record(
        self,
        action: str,
        *,
        actor: str = SYSTEM,
        target_type: str | None = None,
        target_id: object = None,
        outcome: Outcome | str = Outcome.SUCCESS,
        client_addr: str | None = None,
        request_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> int:
        row = {
            "at": now_iso(),
            "actor": actor,
            "action": action,
            "target_type": target_type,
            "target_id": None if target_id is None else str(target_id),
            "outcome": str(Outcome(outcome)),
            "client_addr": client_addr,
            "request_id": request_id,
            "details": orjson.dumps(redact(details or {}, self._secrets)).decode(),
        }
        row_id = await audit_store.insert(self.db, row)
        entry = {**row, "id": row_id, "details": orjson.loads(row["details"])}
        self.bus.publish(AUDIT, AuditEntry.model_validate(entry))
        return row_id

    async def query(self, q: AuditQuery) -> list[AuditEntry]:
        filters = q.model_dump(exclude={"limit", "offset"})
        filters["outcome"] = str(q.outcome) if q.outcome else None
        filters["since"] = iso(q.since)
        filters["until"] = iso(q.until)
        rows = await audit_store.query(self.db, filters, q.limit, q.offset)
        return [
            AuditEntry.model_validate({**dict(row), "details": orjson.loads(row["details"])}) for row in rows
        ]
