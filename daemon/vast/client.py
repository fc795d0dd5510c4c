"""Asyncio client of the real Vast.ai REST API (wire protocol: ``vast-api.md`` §1-§5).

One shared ``aiohttp.ClientSession``; Bearer auth and our own User-Agent; a timeout on
every call; a minimum interval between calls per endpoint (``pacing``); tenacity retries on
429/502/503/504 and transport errors for idempotent calls, with jittered exponential
backoff that honours a numeric ``Retry-After`` up to 60 s; typed errors (``errors``).

A create is never retried blindly: it is sent again only after an HTTP 429 (Vast refused
it before doing anything). After a 5xx, a timeout or a broken connection it raises
``VastUncertainError`` and the caller reconciles by the label it sent.

The API key lives in a private holder; it never reaches a URL, a log line, an exception or
a repr. Anything a server echoes back is redacted before it becomes an error message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any
from urllib.parse import urljoin

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from socialsync.daemon.vast.errors import (
    VastError,
    VastNotFoundError,
    VastProtocolError,
    VastRateLimitError,
    VastUnavailableError,
    VastUncertainError,
    error_from_response,
)
from socialsync.daemon.vast.models import CreateResult, DestroyOutcome, Instance, ListResult, Offer, User
from socialsync.daemon.vast.pacing import Pacer

__all__ = ["DEFAULT_BASE_URL", "OnCall", "RetryPolicy", "VastClient"]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://console.vast.ai"

#: ``on_call(endpoint, outcome, seconds)``; outcome is one of ``ok``, ``app_error`` (2xx with
#: success:false), ``rate_limited``, ``client_error``, ``server_error``, ``protocol_error``,
#: ``timeout``, ``connection_error``.
OnCall = Callable[[str, str, float], None]

COMFY_PORT_FLAG = "-p 8188:8188"
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_MAX_LOG_BYTES = 16 * 1024 * 1024


def _version() -> str:
    try:
        return metadata.version("socialsync")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry settings for idempotent calls.

    Attempt ``n`` (n ≥ 1) failing waits ``min(cap, base * factor**(n-1))``, reduced by a random
    fraction up to ``jitter`` (0 = exact delays), or the server's ``Retry-After`` when numeric
    and at most ``max_retry_after``. A longer Retry-After is not waited for: the call raises.
    No retry is started that would end past ``deadline`` seconds after the first attempt.
    """

    max_attempts: int = 5
    base: float = 0.5
    factor: float = 2.0
    cap: float = 10.0
    jitter: float = 0.5
    deadline: float = 60.0
    max_retry_after: float = 60.0

    def backoff(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        delay = min(self.cap, self.base * self.factor ** max(0, failed_attempts - 1))
        if self.jitter > 0:
            delay *= 1.0 - min(1.0, self.jitter) * (rng or random).random()
        return max(0.0, delay)


class _ConnectionLost(aiohttp.ClientConnectionError):
    """The connection broke after the request may have been sent (replaces aiohttp's own types)."""


async def _no_transparent_retry(
    req: aiohttp.ClientRequest, handler: Callable[[aiohttp.ClientRequest], Awaitable[aiohttp.ClientResponse]]
) -> aiohttp.ClientResponse:
    """aiohttp silently re-sends PUT/DELETE once when a connection drops (RFC 9112 §9.3.1).

    A create is a PUT: a silent second send could rent a second machine. Re-raising the
    failure as a type aiohttp does not retry leaves every retry decision to our own layer
    (which knows which calls are safe, and logs and reports each attempt).
    """
    try:
        return await handler(req)
    except aiohttp.ClientConnectorError:
        raise  # never connected: aiohttp does not retry this either
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise _ConnectionLost(f"{type(exc).__name__}: {exc}") from exc


_MIDDLEWARES = (_no_transparent_retry,)


class _Secret:
    """Holds the key; shows up as ``'***'`` in every repr, traceback local or ``vars()`` dump."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


def _encode_params(params: Mapping[str, Any] | None) -> dict[str, str]:
    """Query-string values as the official client sends them: strings as-is, the rest as JSON."""
    out: dict[str, str] = {}
    for key, value in (params or {}).items():
        if value is None:
            continue
        out[key] = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return out


def _as_id(value: int | str, what: str = "instance id") -> int:
    try:
        ident = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if ident <= 0:
        raise ValueError(f"{what} must be positive, got {ident}")
    return ident


class VastClient:
    """Async client of the Vast REST API. Use as ``async with VastClient(key) as vast: ...``.

    ``session``: a shared ``aiohttp.ClientSession`` (not closed by us); when omitted the client
    opens its own on first use and closes it in ``close()``.
    ``pacing``: seconds between calls per endpoint key (see ``pacing.DEFAULT_PACING``; ``{}``
    disables pacing). ``min_reliability``/``min_direct_ports``: floors merged into every
    ``search_offers`` query unless the caller sets those columns itself.
    """

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        pacing: Mapping[str, float] | None = None,
        min_reliability: float | None = None,
        min_direct_ports: int | None = None,
        on_call: OnCall | None = None,
        user_agent: str | None = None,
        page_size: int = 25,
        logs_poll_interval: float = 0.3,
        logs_poll_attempts: int = 30,
        bundles_path: str = "/api/v0/bundles/",
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValueError("a Vast API key is required")
        key = api_key.strip()
        if any(ch.isspace() for ch in key):
            raise ValueError("the Vast API key must not contain whitespace")
        self._key = _Secret(key)
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._owns_session = session is None
        self.timeout = float(timeout)
        self.retry = retry or RetryPolicy()
        self.pacer = Pacer(pacing)
        self.min_reliability = min_reliability
        self.min_direct_ports = min_direct_ports
        self._on_call = on_call
        self.user_agent = user_agent or f"socialsync/{_version()}"
        self.page_size = max(1, min(25, int(page_size)))
        self.logs_poll_interval = float(logs_poll_interval)
        self.logs_poll_attempts = max(1, int(logs_poll_attempts))
        self.bundles_path = bundles_path
        #: HTTP attempts made, per endpoint key (retries count; pacing waits do not).
        self.calls: Counter[str] = Counter()
        #: Pages (HTTP calls) the last ``list_instances`` took.
        self.last_list_pages = 0
        self._rng = random.Random()

    # ------------------------------------------------------------------ lifecycle

    def __repr__(self) -> str:
        return f"VastClient(base_url={self.base_url!r}, api_key='***')"

    __str__ = __repr__

    async def __aenter__(self) -> VastClient:
        self._get_session()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if this client opened it (a passed-in session is left open)."""
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()
        if self._owns_session:
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or (self._owns_session and self._session.closed):
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    # ------------------------------------------------------------------ offers

    def build_offer_query(
        self,
        query: Mapping[str, Any] | None = None,
        *,
        order: Sequence[Sequence[str]] | None = None,
        limit: int | None = None,
        type: str | None = "on-demand",
        allocated_storage: float | None = None,
        defaults: bool = True,
    ) -> dict[str, Any]:
        """The exact body ``search_offers`` sends: safe defaults and floors, then the caller's query."""
        body: dict[str, Any] = {}
        if defaults:
            body.update(
                verified={"eq": True}, rentable={"eq": True}, rented={"eq": False}, external={"eq": False}
            )
            if self.min_reliability is not None:
                body["reliability"] = {"gte": float(self.min_reliability)}
            if self.min_direct_ports is not None:
                body["direct_port_count"] = {"gte": int(self.min_direct_ports)}
        body.update(query or {})
        if order is not None:
            body["order"] = [list(pair) for pair in order]
        if limit is not None:
            body["limit"] = int(limit)
        if type is not None and "type" not in (query or {}):
            body["type"] = type
        if allocated_storage is not None:
            body["allocated_storage"] = float(allocated_storage)
        return body

    async def search_offers(
        self,
        query: Mapping[str, Any] | None = None,
        *,
        order: Sequence[Sequence[str]] | None = None,
        limit: int | None = None,
        type: str = "on-demand",
        allocated_storage: float | None = None,
    ) -> list[Offer]:
        """``POST /api/v0/bundles/``. A column in ``query`` replaces the default filter on that column."""
        body = self.build_offer_query(
            query, order=order, limit=limit, type=type, allocated_storage=allocated_storage
        )
        return await self._search(body)

    async def get_offer(self, offer_id: int | str) -> Offer | None:
        """One offer by id, even if rented meanwhile (check ``rentable``/``rented``); ``None`` if unknown."""
        ident = _as_id(offer_id, "offer id")
        body = {
            "id": {"eq": ident},
            "verified": {"eq": "any"},
            "rentable": {"eq": "any"},
            "rented": {"eq": "any"},
            "external": {"eq": "any"},
            "type": "on-demand",
        }
        for offer in await self._search(body):
            if offer.id == ident:
                return offer
        return None

    async def _search(self, body: dict[str, Any]) -> list[Offer]:
        obj = await self._call("bundles", "POST", self.bundles_path, body=body)
        offers = obj.get("offers") if isinstance(obj, dict) else None
        if not isinstance(offers, list):
            raise VastProtocolError(
                200, "bad_shape", "offer search answer has no 'offers' list", endpoint="bundles"
            )
        return [Offer.parse(o) for o in offers if isinstance(o, dict)]

    # ------------------------------------------------------------------ create

    async def create_instance(
        self,
        offer_id: int | str,
        *,
        image: str,
        label: str,
        disk: float = 10.0,
        env: Mapping[str, str] | None = None,
        onstart: str | None = None,
        runtype: str = "ssh_direc ssh_proxy",
        price: float | None = None,
        cancel_unavail: bool | None = None,
    ) -> CreateResult:
        """``PUT /api/v0/asks/{offer_id}/``: rent the offer. Sent at most once (again only after a 429).

        ``env`` always gains ``"-p 8188:8188": "1"`` (ComfyUI's port). ``price`` makes it an
        interruptible bid. Raises ``VastOfferUnavailableError`` when the offer is taken,
        ``VastInsufficientCreditError``, ``VastBadRequestError``, or ``VastUncertainError``
        when the outcome is unknown (reconcile by ``label``).
        """
        ident = _as_id(offer_id, "offer id")
        if not image or not isinstance(image, str):
            raise ValueError("image is required")
        if not label or len(label) > 256:
            raise ValueError("label is required and must be at most 256 characters")
        env_obj: dict[str, str] = {str(k): str(v) for k, v in (env or {}).items()}
        env_obj.setdefault(COMFY_PORT_FLAG, "1")
        body: dict[str, Any] = {
            "client_id": "me",
            "image": image,
            "env": env_obj,
            "price": price,
            "disk": float(disk),
            "label": label,
            "extra": None,
            "onstart": onstart,
            "runtype": runtype,
            "image_login": None,
            "python_utf8": False,
            "lang_utf8": False,
            "use_jupyter_lab": False,
            "jupyter_dir": None,
            "force": False,
            "cancel_unavail": cancel_unavail,
        }
        try:
            obj = await self._call(
                "create",
                "PUT",
                f"/api/v0/asks/{ident}/",
                body=body,
                retry_on=_retry_only_rate_limit,
                offer_context=True,
            )
        except VastUnavailableError as exc:
            if exc.error_code == "connect_failed":
                raise  # the connection never opened: the request cannot have reached Vast
            log.warning(
                "vast create uncertain offer_id=%s label=%s reason=%s",
                ident,
                label,
                exc.error_code or exc.status,
            )
            raise VastUncertainError(
                exc.status,
                exc.error_code,
                f"create of offer {ident} may or may not have happened: {exc.msg}",
                endpoint="create",
                label=label,
                offer_id=ident,
            ) from exc
        except VastProtocolError as exc:
            raise VastUncertainError(
                exc.status,
                exc.error_code,
                f"create of offer {ident} answered unreadably: {exc.msg}",
                endpoint="create",
                label=label,
                offer_id=ident,
            ) from exc
        contract = obj.get("new_contract") if isinstance(obj, dict) else None
        try:
            instance_id = int(contract)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise VastUncertainError(
                200,
                "bad_shape",
                f"create of offer {ident} succeeded without an instance id",
                endpoint="create",
                label=label,
                offer_id=ident,
            ) from None
        key = obj.get("instance_api_key")
        log.info("vast created instance_id=%s offer_id=%s label=%s", instance_id, ident, label)
        return CreateResult(instance_id=instance_id, instance_api_key=key if isinstance(key, str) else None)

    # ------------------------------------------------------------------ instances

    async def list_instances(
        self,
        select_filters: Mapping[str, Any] | None = None,
        *,
        order_by: Sequence[Mapping[str, str]] | None = None,
        max_pages: int = 400,
    ) -> ListResult:
        """All matching instances via paged ``GET /api/v1/instances/``; ``.pages`` = HTTP calls made."""
        params: dict[str, Any] = {
            "select_filters": dict(select_filters or {}),
            "order_by": list(order_by or [{"col": "id", "dir": "asc"}]),
            "limit": self.page_size,
        }
        instances: list[Instance] = []
        seen_ids: set[int] = set()
        seen_tokens: set[str] = set()
        total: int | None = None
        pages = 0
        token: str | None = None
        while True:
            page_params = dict(params)
            if token:
                page_params["after_token"] = token
            obj = await self._call("list", "GET", "/api/v1/instances/", params=page_params)
            pages += 1
            self.last_list_pages = pages
            if not isinstance(obj, dict):
                raise VastProtocolError(
                    200, "bad_shape", "instance list answer is not an object", endpoint="list"
                )
            for row in obj.get("instances") or []:
                inst = Instance.parse(row)
                if inst.id is not None and inst.id in seen_ids:
                    continue
                if inst.id is not None:
                    seen_ids.add(inst.id)
                instances.append(inst)
            if isinstance(obj.get("total_instances"), int):
                total = obj["total_instances"]
            nxt = obj.get("next_token")
            if not nxt:
                break
            token = str(nxt)
            if token in seen_tokens or pages >= max_pages:
                raise VastProtocolError(
                    200,
                    "paging_loop",
                    f"instance list paging did not end after {pages} pages",
                    endpoint="list",
                )
            seen_tokens.add(token)
        log.debug("vast list instances=%d pages=%d", len(instances), pages)
        return ListResult(instances=instances, pages=pages, total=total)

    async def show_instance(self, instance_id: int | str) -> Instance | None:
        """``GET /api/v0/instances/{id}/?owner=me``; ``None`` when missing (``{"instances": null}`` or 404)."""
        ident = _as_id(instance_id)
        try:
            obj = await self._call("show", "GET", f"/api/v0/instances/{ident}/", params={"owner": "me"})
        except VastNotFoundError:
            return None
        row = obj.get("instances") if isinstance(obj, dict) else None
        if isinstance(row, list):  # tolerate a list under the plural key
            row = next((r for r in row if isinstance(r, dict) and str(r.get("id")) == str(ident)), None)
        if not isinstance(row, dict):
            return None
        return Instance.parse(row)

    async def start_instance(self, instance_id: int | str) -> None:
        """``PUT /api/v0/instances/{id}/ {"state": "running"}`` (may sit in "scheduling" for a while)."""
        await self._manage(instance_id, {"state": "running"})

    async def stop_instance(self, instance_id: int | str) -> None:
        """``PUT /api/v0/instances/{id}/ {"state": "stopped"}`` (GPU released, disk still billed)."""
        await self._manage(instance_id, {"state": "stopped"})

    async def set_label(self, instance_id: int | str, label: str) -> None:
        """``PUT /api/v0/instances/{id}/ {"label": ...}`` (at most 1024 characters)."""
        if len(label) > 1024:
            raise ValueError("label must be at most 1024 characters")
        await self._manage(instance_id, {"label": label})

    async def _manage(self, instance_id: int | str, body: dict[str, Any]) -> None:
        ident = _as_id(instance_id)
        await self._call("manage", "PUT", f"/api/v0/instances/{ident}/", body=body)

    async def reboot_instance(self, instance_id: int | str) -> None:
        """``PUT /api/v0/instances/reboot/{id}/``: docker stop + start, GPU kept."""
        ident = _as_id(instance_id)
        await self._call("reboot", "PUT", f"/api/v0/instances/reboot/{ident}/", body={})

    async def destroy_instance(self, instance_id: int | str) -> DestroyOutcome:
        """``DELETE /api/v0/instances/{id}/``. An instance that is already gone counts as success."""
        ident = _as_id(instance_id)
        try:
            await self._call("destroy", "DELETE", f"/api/v0/instances/{ident}/", body={})
        except VastNotFoundError:
            log.info("vast destroy instance_id=%s outcome=already_gone", ident)
            return DestroyOutcome.ALREADY_GONE
        log.info("vast destroy instance_id=%s outcome=destroyed", ident)
        return DestroyOutcome.DESTROYED

    async def attach_ssh_key(self, instance_id: int | str, public_key: str) -> None:
        """``POST /api/v0/instances/{id}/ssh/`` with one OpenSSH public key line."""
        ident = _as_id(instance_id)
        key = (public_key or "").strip()
        if not key or "\n" in key or not key.split()[0].startswith(("ssh-", "ecdsa-", "sk-")):
            raise ValueError("public_key must be one OpenSSH public key line")
        await self._call("ssh", "POST", f"/api/v0/instances/{ident}/ssh/", body={"ssh_key": key})

    async def request_logs(self, instance_id: int | str, tail: int = 1000, filter: str | None = None) -> str:
        """Container logs: ``PUT .../request_logs/{id}/``, then poll ``result_url`` (no auth) until ready."""
        ident = _as_id(instance_id)
        body: dict[str, Any] = {"tail": str(int(tail))}
        if filter:
            body["filter"] = filter
        obj = await self._call("request_logs", "PUT", f"/api/v0/instances/request_logs/{ident}/", body=body)
        url = obj.get("result_url") if isinstance(obj, dict) else None
        if not isinstance(url, str) or not url:
            raise VastProtocolError(
                200, "bad_shape", "request_logs answer has no result_url", endpoint="request_logs"
            )
        return await self._fetch_result(urljoin(self.base_url + "/", url))

    async def _fetch_result(self, url: str) -> str:
        session = self._get_session()
        timeout = aiohttp.ClientTimeout(total=min(self.timeout, 10.0))
        last = "no answer"
        for attempt in range(1, self.logs_poll_attempts + 1):
            started = time.monotonic()
            outcome = "connection_error"
            try:
                # No Authorization: the result lives on a storage bucket, not on Vast's API.
                async with session.get(
                    url,
                    headers={"User-Agent": self.user_agent},
                    timeout=timeout,
                    allow_redirects=True,
                    middlewares=_MIDDLEWARES,
                ) as resp:
                    if resp.status == 200:
                        raw = await resp.content.read(_MAX_LOG_BYTES)
                        outcome = "ok"
                        return raw.decode("utf-8", "replace")
                    outcome = "client_error" if resp.status < 500 else "server_error"
                    last = f"HTTP {resp.status}"
            except TimeoutError:
                outcome, last = "timeout", "timeout"
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                last = type(exc).__name__
            finally:
                self._report("logs_fetch", outcome, time.monotonic() - started)
            log.debug("vast logs poll attempt=%d result=%s", attempt, last)
            if attempt < self.logs_poll_attempts:
                await asyncio.sleep(self.logs_poll_interval)
        raise VastUnavailableError(
            None,
            "logs_timeout",
            f"logs not ready after {self.logs_poll_attempts} polls ({last})",
            endpoint="logs_fetch",
        )

    async def current_user(self) -> User:
        """``GET /api/v0/users/current``: credit, balance, email... (the ``api_key`` field is dropped)."""
        obj = await self._call("user", "GET", "/api/v0/users/current")
        if not isinstance(obj, dict):
            raise VastProtocolError(200, "bad_shape", "user answer is not an object", endpoint="user")
        return User.parse(obj)

    # ------------------------------------------------------------------ transport

    def _redact(self, text: str) -> str:
        key = self._key.reveal()
        return text.replace(key, "***") if key and key in text else text

    def _report(self, endpoint: str, outcome: str, seconds: float) -> None:
        self.calls[endpoint] += 1
        if self._on_call is None:
            return
        try:
            self._on_call(endpoint, outcome, seconds)
        except Exception:  # a metrics hook must never break a call
            log.debug("vast on_call hook failed endpoint=%s", endpoint, exc_info=True)

    async def _call(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        retry_on: Callable[[BaseException], bool] | None = None,
        offer_context: bool = False,
    ) -> Any:
        """One logical call: pacing + attempts + retries. Returns the decoded JSON of a success."""
        if method in ("POST", "PUT", "DELETE") and body is None:
            body = {}
        policy = self.retry
        should_retry = retry_on or _retry_idempotent

        def retry_predicate(exc: BaseException) -> bool:
            if not should_retry(exc):
                return False
            ra = getattr(exc, "retry_after", None)
            return not (ra is not None and ra > policy.max_retry_after)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            ra = getattr(exc, "retry_after", None)
            if ra is not None:
                return float(ra)
            return policy.backoff(state.attempt_number, self._rng)

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= policy.max_attempts:
                return True
            return state.seconds_since_start + state.upcoming_sleep > policy.deadline

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            reason = (
                f"http_{exc.status}"
                if isinstance(exc, VastError) and exc.status
                else (exc.error_code if isinstance(exc, VastError) else type(exc).__name__)
            )
            log.info(
                "vast retry endpoint=%s attempt=%d delay=%.2f reason=%s",
                endpoint,
                state.attempt_number,
                state.upcoming_sleep,
                reason,
            )

        retrying = AsyncRetrying(
            retry=retry_if_exception(retry_predicate),
            wait=wait,
            stop=stop,
            before_sleep=before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(endpoint, method, path, params, body, offer_context)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self,
        endpoint: str,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        body: Any,
        offer_context: bool,
    ) -> Any:
        await self.pacer.wait(endpoint)
        session = self._get_session()
        headers = {
            "Authorization": f"Bearer {self._key.reveal()}",
            "User-Agent": self.user_agent,
            "Accept": "application/json",
        }
        data: bytes | None = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        started = time.monotonic()
        outcome = "connection_error"
        status: int | None = None
        try:
            try:
                async with session.request(
                    method,
                    self.base_url + path,
                    params=_encode_params(params),
                    data=data,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                    middlewares=_MIDDLEWARES,
                ) as resp:
                    status = resp.status
                    raw = await resp.read()
                    resp_headers = resp.headers
            except aiohttp.ConnectionTimeoutError as exc:
                outcome = "timeout"  # no connection within the timeout: nothing was sent
                raise VastUnavailableError(
                    None,
                    "connect_failed",
                    f"cannot connect within {self.timeout:g}s",
                    endpoint=endpoint,
                    retryable=True,
                ) from exc
            except TimeoutError as exc:
                outcome = "timeout"
                raise VastUnavailableError(
                    None, "timeout", f"no answer within {self.timeout:g}s", endpoint=endpoint, retryable=True
                ) from exc
            except aiohttp.ClientConnectorError as exc:
                raise VastUnavailableError(
                    None,
                    "connect_failed",
                    self._redact(f"cannot connect: {exc}"),
                    endpoint=endpoint,
                    retryable=True,
                ) from exc
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                raise VastUnavailableError(
                    None,
                    "connection_error",
                    self._redact(f"connection failed: {type(exc).__name__}: {exc}"),
                    endpoint=endpoint,
                    retryable=True,
                ) from exc

            text = self._redact(raw.decode("utf-8", "replace"))
            if 200 <= status < 300:
                try:
                    obj = json.loads(text) if text.strip() else {}
                except ValueError:
                    outcome = "protocol_error"
                    raise VastProtocolError(
                        status, "bad_json", f"answer is not JSON: {text[:120]!r}", endpoint=endpoint
                    ) from None
                if isinstance(obj, dict) and obj.get("success") is False:
                    outcome = "app_error"
                    raise error_from_response(
                        status, text, resp_headers, endpoint=endpoint, offer_context=offer_context
                    )
                outcome = "ok"
                return obj
            err = error_from_response(
                status, text, resp_headers, endpoint=endpoint, offer_context=offer_context
            )
            if isinstance(err, VastRateLimitError):
                outcome = "rate_limited"
                if err.retry_after:
                    self.pacer.push_back(endpoint, min(err.retry_after, self.retry.max_retry_after))
            else:
                outcome = "server_error" if status >= 500 else "client_error"
            raise err
        finally:
            elapsed = time.monotonic() - started
            self._report(endpoint, outcome, elapsed)
            log.debug(
                "vast call endpoint=%s method=%s path=%s status=%s outcome=%s ms=%.0f",
                endpoint,
                method,
                path,
                status,
                outcome,
                elapsed * 1000,
            )


def _retry_idempotent(exc: BaseException) -> bool:
    """Idempotent calls: retry 429 (not the daily quota), 502/503/504 and transport failures."""
    if isinstance(exc, VastRateLimitError):
        return exc.retryable and exc.status == 429
    if isinstance(exc, VastUnavailableError):
        return exc.retryable and (exc.status is None or exc.status in _RETRY_STATUSES)
    return False


def _retry_only_rate_limit(exc: BaseException) -> bool:
    """Creates: only an HTTP 429 proves Vast did nothing, so only that is sent again."""
    return isinstance(exc, VastRateLimitError) and exc.retryable and exc.status == 429
