"""Event envelopes and the data of each event type, as sent on /ws and ZeroMQ."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from socialsync.common.servers import Server, ServerStatus, SetupStatus
from socialsync.common.wire import WireModel

SERVER_STATUS = "server_status"
GENERATION_PROGRESS = "generation_progress"
GENERATION_COMPLETED = "generation_completed"
GENERATION_FAILED = "generation_failed"
MODEL_DOWNLOAD = "model_download"
COST_ACTION = "cost_action"
AUDIT = "audit"
LOG = "log"


class Envelope(WireModel):
    type: str
    data: dict[str, Any]
    seq: int
    ts: str


class ServerStatusData(WireModel):
    """Seed: ``{"serverId": 1, "status": "running", "setupStatus": "ready"}``."""

    server_id: int
    status: ServerStatus
    setup_status: SetupStatus
    reason: str | None = None


class GenerationProgressData(WireModel):
    """Seed: ``{"generationId": 123, "progress": 75, "status": "processing"}``."""

    generation_id: int
    progress: int = Field(ge=0, le=100)
    status: str
    server_id: int | None = None
    step: int | None = None
    steps: int | None = None


class LogData(WireModel):
    level: str
    message: str
    server_id: int | None = None


# Control messages: they share the envelope's shape but are not events. Their ``seq``
# is the position of the stream they describe, never a new number.
HELLO = "hello"  # first message of a connection: baseline seq, snapshot unless resumed
RESNAPSHOT = "resnapshot"  # what was asked for is gone: a hello with a snapshot follows
SUBSCRIBED = "subscribed"  # acknowledges a subscribe (the filter now in force)
PONG = "pong"
ERROR = "error"  # a message from the client was refused; the connection stays open
HEARTBEAT = "heartbeat"  # ZeroMQ only: liveness, the daemon's epoch and its current seq
CONTROL_TYPES = frozenset({HELLO, RESNAPSHOT, SUBSCRIBED, PONG, ERROR, HEARTBEAT})

EVENT_TYPES = (SERVER_STATUS, GENERATION_PROGRESS, GENERATION_COMPLETED, GENERATION_FAILED, MODEL_DOWNLOAD,
               COST_ACTION, AUDIT, LOG)
# Events that are always about one server: with a serverIds filter they pass only for those.
SERVER_EVENT_TYPES = frozenset({SERVER_STATUS, MODEL_DOWNLOAD})


class ActiveGeneration(WireModel):
    """A queued or processing generation, as the snapshot carries it."""

    id: int
    server_id: int | None = None
    status: str
    progress: int = 0
    prompt: str
    created_at: str


class Snapshot(WireModel):
    """The state a client starts from: servers that are not destroyed and the
    generations still queued or processing."""

    servers: list[Server] = Field(default_factory=list)
    generations: list[ActiveGeneration] = Field(default_factory=list)


class SnapshotResponse(WireModel):
    """``GET /api/events/snapshot``: the snapshot and the ``seq`` it is at least as new as."""

    seq: int
    epoch: str = Field(description="Changes when the daemon restarts; seq numbers restart with it.")
    snapshot: Snapshot


class MissedEvents(WireModel):
    """``GET /api/events?since=SEQ&epoch=E``: the events after ``since`` still in the
    replay ring (what a ZeroMQ subscriber missed while away), and the seq they reach."""

    seq: int
    epoch: str
    events: list[dict[str, Any]] = Field(description="Envelopes {type, data, seq, ts}, oldest first")


class EventsInfo(WireModel):
    """``GET /api/events/info``: where the live streams are and where they stand."""

    seq: int = Field(description="The seq of the last event published (0 before the first).")
    epoch: str
    oldest_seq: int | None = Field(description="The oldest seq still in the replay ring.")
    ring_size: int
    ws_path: str = "/ws"
    ws_clients: int = 0
    zmq_endpoint: str | None = Field(
        default=None, description="The ZeroMQ PUB endpoint (ipc:// or tcp://), null when disabled.")
    zmq_heartbeat: float | None = None
    types: list[str] = Field(default_factory=lambda: list(EVENT_TYPES))


@dataclass(frozen=True)
class EventFilter:
    """What a client asked to see. ``None`` means everything. An event matches
    ``server_ids`` by its ``data.serverId``; events without one pass unless they are
    about a server (``server_status``, ``model_download``, an ``audit`` of a server)."""

    types: frozenset[str] | None = None
    server_ids: frozenset[int] | None = None

    @classmethod
    def of(cls, types: Iterable[str] | None = None, server_ids: Iterable[int] | None = None) -> EventFilter:
        return cls(
            None if types is None else frozenset(types),
            None if server_ids is None else frozenset(int(s) for s in server_ids),
        )

    @property
    def everything(self) -> bool:
        return self.types is None and self.server_ids is None

    def matches(self, type: str, data: dict[str, Any]) -> bool:
        if type in CONTROL_TYPES:
            return True
        if self.types is not None and type not in self.types:
            return False
        if self.server_ids is None:
            return True
        server_id = data.get("serverId")
        if server_id is not None:
            return _as_int(server_id) in self.server_ids
        if type in SERVER_EVENT_TYPES:
            return False
        if type == AUDIT and data.get("targetType") == "server":
            return _as_int(data.get("targetId")) in self.server_ids
        return True

    def snapshot(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        """The part of a snapshot (as JSON) this filter lets through."""
        if self.server_ids is None:
            return snapshot
        ids = self.server_ids
        return {
            **snapshot,
            "servers": [s for s in snapshot.get("servers", []) if s.get("id") in ids],
            "generations": [g for g in snapshot.get("generations", []) if g.get("serverId") in ids],
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "types": None if self.types is None else sorted(self.types),
            "serverIds": None if self.server_ids is None else sorted(self.server_ids),
        }


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
