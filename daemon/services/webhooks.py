"""Webhooks: ``generation.completed`` / ``generation.failed`` POSTed to a generation's
``webhookUrl`` (or the configured default), signed, retried, every attempt recorded.

Signature: ``X-SocialSync-Signature: sha256=<hex>``, the HMAC-SHA256 with the webhook
secret of ``"<X-SocialSync-Timestamp>.<raw body>"`` (a receiver recomputes it and
refuses stale timestamps, so a captured request cannot be replayed later).

A delivery row is written before the first attempt; 2xx ends it ``delivered``; other
answers and transport errors are retried with exponential backoff until the retry
deadline, then the row stays ``dead`` (a dead letter, listed by the API). Pending rows
are resumed after a restart. URLs on loopback, private, link-local or reserved ranges
are refused unless ``webhook_allow_private``: checked when given, and enforced again on
every connection by the webhook session's own resolver (``GuardedResolver``), so a name
that answers a public address to the check and a private one to the connect (DNS
rebinding) still cannot reach the daemon's network.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import secrets
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiohttp.abc
import orjson

from socialsync.common.queue import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    DeliveryAttempt,
    DeliveryStatus,
    WebhookDelivery,
)
from socialsync.common.wire import iso, now_iso
from socialsync.daemon.errors import BadRequest
from socialsync.daemon.settings import SchedulerSettings
from socialsync.daemon.store import scheduling as store
from socialsync.daemon.store.db import Database

log = logging.getLogger(__name__)


class UnsafeUrl(BadRequest):
    pass


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str, *, tolerance: float = 300.0,
           now: float | None = None) -> bool:
    """What a receiver does (used by the tests; documented for client authors)."""
    try:
        age = abs((now if now is not None else time.time()) - float(timestamp))
    except ValueError:
        return False
    return age <= tolerance and hmac.compare_digest(sign(secret, timestamp, body), signature)


def _blocked(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast
            or ip.is_unspecified or not ip.is_global)


class GuardedResolver(aiohttp.abc.AbstractResolver):
    """A resolver that never hands the connector a loopback, private or reserved address:
    the addresses a webhook connects to are the ones that were checked."""

    def __init__(self, inner: aiohttp.abc.AbstractResolver):
        self.inner = inner

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[aiohttp.abc.ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        allowed = [r for r in results if not _blocked(r["host"])]
        if not allowed:
            # (errno, text): the connector's error then carries the text.
            raise socket.gaierror(socket.EAI_NONAME, f"{host} resolves only to loopback, private or reserved addresses")
        return allowed

    async def close(self) -> None:
        await self.inner.close()


def check_url_syntax(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeUrl("Invalid webhook URL", "webhookUrl must be an absolute http(s) URL")
    if parts.username or parts.password:
        raise UnsafeUrl("Invalid webhook URL", "webhookUrl must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeUrl("Invalid webhook URL", "webhookUrl has an invalid port") from None
    return parts.hostname, port


class WebhookService:
    def __init__(self, db: Database, session: aiohttp.ClientSession, settings: SchedulerSettings, state_dir: Path,
                 *, resolver: aiohttp.abc.AbstractResolver | None = None):
        self.db = db
        self.session = session
        self._own_session: aiohttp.ClientSession | None = None
        self._resolver = resolver
        self.settings = settings
        self.state_dir = state_dir
        self._secret: bytes | None = None
        self._tasks: dict[int, asyncio.Task] = {}
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._secret = await asyncio.to_thread(self._load_secret)
        if not self.settings.webhook_allow_private:
            # Deliveries get their own session whose resolver drops private addresses.
            connector = aiohttp.TCPConnector(resolver=GuardedResolver(self._dns()), limit=32)
            self._own_session = aiohttp.ClientSession(connector=connector)
            self.session = self._own_session
        for row in await store.pending_deliveries(self.db):
            self._spawn(row["id"])

    async def stop(self) -> None:
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._own_session is not None:
            await self._own_session.close()

    def _load_secret(self) -> bytes:
        if self.settings.webhook_secret is not None and self.settings.webhook_secret.get_secret_value():
            return self.settings.webhook_secret.get_secret_value().encode()
        path = self.state_dir / "webhook.secret"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(32) + "\n")
            path.chmod(0o600)
        return path.read_text().strip().encode()

    @property
    def secret(self) -> bytes:
        assert self._secret is not None, "start() first"
        return self._secret

    # ------------------------------------------------------------------ URLs

    async def check_url(self, url: str) -> None:
        """Refuse a URL that is malformed or (unless allowed) points at a private range."""
        host, port = check_url_syntax(url)
        if self.settings.webhook_allow_private:
            return
        if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
            raise UnsafeUrl("Webhook URL not allowed", "webhookUrl points at loopback")
        try:
            addrs = [host.strip("[]")] if self._is_ip(host) else await self._resolve(host, port)
        except OSError as exc:
            raise UnsafeUrl("Webhook URL not allowed", f"webhookUrl host does not resolve: {exc}") from None
        bad = [a for a in addrs if _blocked(a)]
        if bad:
            raise UnsafeUrl("Webhook URL not allowed",
                            f"webhookUrl points at a loopback, private or reserved address ({bad[0]}); "
                            "set scheduler.webhook_allow_private to allow it")

    @staticmethod
    def _is_ip(host: str) -> bool:
        try:
            ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
        except ValueError:
            return False
        return True

    def _dns(self) -> aiohttp.abc.AbstractResolver:
        """The one name service for the check and the connect (a thread-pool getaddrinfo)."""
        if self._resolver is None:
            self._resolver = aiohttp.ThreadedResolver()
        return self._resolver

    async def _resolve(self, host: str, port: int) -> list[str]:
        async with asyncio.timeout(5):
            results = await self._dns().resolve(host, port, socket.AF_UNSPEC)
        return sorted({r["host"] for r in results})

    def url_for(self, webhook_url: str | None) -> str | None:
        return webhook_url or self.settings.webhook_default_url

    # ------------------------------------------------------------------ deliveries

    async def enqueue(self, generation_id: int | None, event: str, url: str, data: dict[str, Any]) -> int:
        now = now_iso()
        payload = {"event": event, "createdAt": now, "data": data}
        delivery_id = await store.insert_delivery(self.db, {
            "generation_id": generation_id, "event": event, "url": url, "payload": orjson.dumps(payload).decode(),
            "status": DeliveryStatus.PENDING, "attempts": 0, "attempt_log": "[]", "created_at": now,
            "updated_at": now, "next_attempt_at": now})
        if not self._closed:
            self._spawn(delivery_id)
        return delivery_id

    def _spawn(self, delivery_id: int) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(delivery_id), name=f"webhook-{delivery_id}")
        self._tasks[delivery_id] = task
        task.add_done_callback(lambda t: self._tasks.pop(delivery_id, None))

    def _delay(self, attempt: int) -> float:
        return min(self.settings.webhook_retry_max, self.settings.webhook_retry_base * 2 ** (attempt - 1))

    async def _deliver(self, delivery_id: int) -> None:
        row = await store.get_delivery(self.db, delivery_id)
        if row is None or row["status"] != DeliveryStatus.PENDING:
            return
        attempts, log_ = row["attempts"], orjson.loads(row["attempt_log"])
        created = datetime.fromisoformat(row["created_at"])
        deadline = created + timedelta(seconds=self.settings.webhook_retry_deadline)
        if row["next_attempt_at"]:
            wait = (datetime.fromisoformat(row["next_attempt_at"]) - datetime.now(UTC)).total_seconds()
            if wait > 0:
                await asyncio.sleep(wait)
        body = row["payload"].encode()
        while True:
            attempts += 1
            status, error, took = await self._attempt(row["url"], row["event"], delivery_id, body)
            log_.append({"at": now_iso(), "status": status, "error": error, "durationMs": took})
            ok = status is not None and 200 <= status < 300
            now = datetime.now(UTC)
            delay = self._delay(attempts)
            if ok:
                fields = {"status": DeliveryStatus.DELIVERED, "next_attempt_at": None, "last_error": None}
            elif now + timedelta(seconds=delay) > deadline:
                fields = {"status": DeliveryStatus.DEAD, "next_attempt_at": None,
                          "last_error": error or f"HTTP {status}"}
            else:
                fields = {"next_attempt_at": iso(now + timedelta(seconds=delay)),
                          "last_error": error or f"HTTP {status}"}
            await store.update_delivery(self.db, delivery_id, {
                **fields, "attempts": attempts, "attempt_log": orjson.dumps(log_).decode(), "updated_at": now_iso()})
            if fields.get("status") == DeliveryStatus.DELIVERED:
                log.info("webhook delivered delivery_id=%d attempts=%d", delivery_id, attempts)
                return
            if fields.get("status") == DeliveryStatus.DEAD:
                log.warning("webhook dead letter delivery_id=%d attempts=%d error=%s", delivery_id, attempts,
                            fields["last_error"])
                return
            await asyncio.sleep(delay)

    async def _attempt(self, url: str, event: str, delivery_id: int, body: bytes
                       ) -> tuple[int | None, str | None, int]:
        started = time.monotonic()
        try:
            await self.check_url(url)  # again: names can move to a private address
            timestamp = str(int(time.time()))
            headers = {"Content-Type": "application/json", EVENT_HEADER: event, DELIVERY_HEADER: str(delivery_id),
                       TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(self.secret, timestamp, body)}
            async with self.session.post(url, data=body, headers=headers, allow_redirects=False,
                                         timeout=aiohttp.ClientTimeout(total=self.settings.webhook_timeout)) as resp:
                await resp.read()
                return resp.status, None, int((time.monotonic() - started) * 1000)
        except UnsafeUrl as exc:
            return None, f"{exc.message}: {exc.details}", int((time.monotonic() - started) * 1000)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500], int((time.monotonic() - started) * 1000)

    # ------------------------------------------------------------------ reads

    async def list(self, status: str | None, limit: int, before_id: int | None = None) -> list[WebhookDelivery]:
        rows = await store.deliveries(self.db, status=status, limit=limit, before_id=before_id)
        return [to_wire(r) for r in rows]


def to_wire(row) -> WebhookDelivery:
    return WebhookDelivery(
        id=row["id"], generation_id=row["generation_id"], event=row["event"], url=row["url"], status=row["status"],
        attempts=row["attempts"],
        attempt_log=[DeliveryAttempt.model_validate(a) for a in orjson.loads(row["attempt_log"])],
        last_error=row["last_error"], next_attempt_at=row["next_attempt_at"], created_at=row["created_at"],
        updated_at=row["updated_at"], payload=orjson.loads(row["payload"]))
