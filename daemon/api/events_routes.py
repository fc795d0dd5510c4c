"""Live events: the ``/ws`` websocket, and where the ZeroMQ stream is (``/api/events/info``)
with the snapshot a ZeroMQ subscriber starts from (``/api/events/snapshot``).

``events_ctx`` (a ``cleanup_ctx``) owns the hub and the ZeroMQ publisher;
``close_event_streams`` (an ``on_shutdown`` hook) closes every websocket with 1001
before aiohttp waits for the handlers to finish."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import orjson
from aiohttp import web
from pydantic import Field, field_validator

from socialsync.common.events import LOG, EventFilter, EventsInfo, MissedEvents, SnapshotResponse
from socialsync.common.wire import QueryModel
from socialsync.daemon import keys
from socialsync.daemon.api.registry import Ctx, Routes
from socialsync.daemon.errors import Conflict
from socialsync.daemon.events.hub import WebSocketHub
from socialsync.daemon.events.zmq_pub import PathTooLong, ZmqPublisher, default_endpoint
from socialsync.daemon.logs import EventLogHandler
from socialsync.daemon.services.snapshot import build_snapshot

log = logging.getLogger(__name__)

routes = Routes("events")
DISABLED = ("", "off", "none", "disabled")


class WsQuery(QueryModel):
    since: int | None = Field(default=None, ge=0, description="Resume after this seq (replayed from the ring)")
    epoch: str | None = Field(default=None, max_length=64,
                              description="The epoch the seq belongs to; another one means re-snapshot")
    types: str | None = Field(default=None, max_length=1000, description="Comma-separated event types")
    server_ids: str | None = Field(default=None, max_length=2000, description="Comma-separated server ids")
    token: str | None = Field(default=None, description="An API key, for clients that cannot set headers")

    @field_validator("server_ids")
    @classmethod
    def _ids(cls, value: str | None) -> str | None:
        if value is not None:
            for part in filter(None, value.split(",")):
                if not part.strip().isdigit():
                    raise ValueError(f"not a server id: {part!r}")
        return value

    def event_filter(self) -> EventFilter:
        types = None if self.types is None else [t.strip() for t in self.types.split(",") if t.strip()]
        ids = None if self.server_ids is None else [int(p) for p in self.server_ids.split(",") if p.strip()]
        return EventFilter.of(types, ids)


@routes.get("/ws", websocket=True, raw=True, query=WsQuery)
async def websocket(ctx: Ctx) -> web.StreamResponse:
    """Live events: a ``hello`` with the seq and a snapshot, then every event as
    ``{type, data, seq, ts}``; ``?since=SEQ`` resumes; send ``subscribe`` to filter."""
    query: WsQuery = ctx.query
    return await ctx[keys.HUB].serve(
        ctx.request, since=query.since, epoch=query.epoch, filter=query.event_filter(),
        key_id=ctx.identity.key_id,
    )


@routes.get("/api/events/info", response=EventsInfo)
async def events_info(ctx: Ctx) -> EventsInfo:
    """Where the live streams are (the ZeroMQ endpoint) and the current seq."""
    hub: WebSocketHub = ctx[keys.HUB]
    publisher = ctx[keys.ZMQ_PUB]
    return EventsInfo(
        seq=hub.bus.seq,
        epoch=hub.epoch,
        oldest_seq=hub.oldest_seq,
        ring_size=hub.ring_size,
        ws_clients=hub.clients,
        zmq_endpoint=publisher.endpoint if publisher is not None else None,
        zmq_heartbeat=publisher.heartbeat if publisher is not None else None,
    )


class MissedQuery(QueryModel):
    since: int = Field(ge=0, description="The last seq the client has")
    epoch: str | None = Field(default=None, max_length=64, description="The epoch that seq belongs to")


@routes.get("/api/events", query=MissedQuery, response=MissedEvents, errors=(409,))
async def missed_events(ctx: Ctx) -> web.Response:
    """The events after ``since`` (a ZeroMQ subscriber back from a drop resumes with
    them); 409 when they are no longer buffered or the daemon restarted: take a snapshot."""
    hub: WebSocketHub = ctx[keys.HUB]
    events, reason = hub.missed(ctx.query.since, ctx.query.epoch)
    if events is None:
        raise Conflict("Cannot resume", reason or "take a snapshot")
    body = b'{"seq":%d,"epoch":%s,"events":[%s]}' % (
        events[-1].seq if events else ctx.query.since, orjson.dumps(hub.epoch), b",".join(e.json for e in events))
    return web.Response(body=body, content_type="application/json")


@routes.get("/api/events/snapshot", response=SnapshotResponse)
async def events_snapshot(ctx: Ctx) -> web.Response:
    """The snapshot the websocket's hello carries, and the seq it is at least as new as."""
    hub: WebSocketHub = ctx[keys.HUB]
    seq, snapshot = await hub.snapshot()
    body = orjson.dumps({"seq": seq, "epoch": hub.epoch, "snapshot": snapshot})
    return web.Response(body=body, content_type="application/json")


async def events_ctx(app: web.Application) -> AsyncIterator[None]:
    """The websocket hub and the ZeroMQ publisher, sharing one epoch."""
    settings = app[keys.SETTINGS]
    events = settings.events
    bus = app[keys.BUS]

    async def snapshot() -> dict:
        return await build_snapshot(app[keys.DB])

    hub = WebSocketHub(bus, snapshot, queue_size=events.ws_queue, heartbeat=events.ws_heartbeat,
                       ring_size=events.ring_size)
    app[keys.HUB] = hub
    publisher = None
    endpoint = events.zmq_endpoint if events.zmq_endpoint is not None else default_endpoint(settings.run_dir)
    if endpoint.strip().lower() not in DISABLED:
        publisher = ZmqPublisher(bus, endpoint, hwm=events.zmq_hwm, epoch=hub.epoch)
        try:
            publisher.open()
        except PathTooLong as exc:
            # A path the kernel cannot bind is a configuration gap, not a reason to
            # refuse to run: /ws still serves every event.
            log.error("ZeroMQ events disabled: %s", exc)
            publisher = None
    app[keys.ZMQ_PUB] = publisher
    handler = None
    if events.log_level != "off":
        handler = EventLogHandler(lambda data: bus.publish(LOG, data), asyncio.get_running_loop(),
                                  level=logging.getLevelName(events.log_level), rate=events.log_rate)
        logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
        await hub.close()
        if publisher is not None:
            await publisher.close()


async def close_event_streams(app: web.Application) -> None:
    hub = app.get(keys.HUB)
    if hub is not None:
        await hub.close_all()
