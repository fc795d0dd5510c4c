"""Prometheus metrics, on the daemon's own ``CollectorRegistry`` (never the global one,
so two daemons in one process — tests — never share a counter).

Counters and histograms are fed as things happen: the Vast and ComfyUI clients'
``on_call`` hooks, and one event-bus listener (generation outcomes and durations, every
event by type, cost actions). Gauges are computed when scraped: a few cheap indexed
queries (servers by status, queue depth, burn rate, spend) plus in-memory figures read
from their owners (websocket clients, ZeroMQ messages, rate-limit refusals)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from socialsync.common.analytics import COST_ACTION
from socialsync.common.events import GENERATION_COMPLETED, GENERATION_FAILED

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NS = "socialsync"
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
GENERATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)

#: ``snapshot()`` → an object with the attributes of ``services.analytics.GaugeValues``.
GaugeSource = Callable[[], Awaitable[Any]]


class _Live(Collector):
    """Figures read at scrape time. ``values`` is refreshed (async) just before a render;
    the in-memory sources are read during it."""

    def __init__(self) -> None:
        self.values: Any = None
        self.hub: Any = None
        self.zmq: Any = None
        self.limiter: Any = None

    def describe(self) -> Iterable[Metric]:
        return []  # names are checked on collect only; nothing to describe up front

    def collect(self) -> Iterable[Metric]:
        v = self.values
        if v is not None:
            servers = GaugeMetricFamily(f"{NS}_servers", "Servers that are not destroyed, by status",
                                        labels=["status"])
            for status, n in sorted(v.servers_by_status.items()):
                servers.add_metric([status], n)
            yield servers
            setup = GaugeMetricFamily(f"{NS}_servers_setup", "Servers that are not destroyed, by setup status",
                                      labels=["setup_status"])
            for status, n in sorted(v.servers_by_setup.items()):
                setup.add_metric([status], n)
            yield setup
            yield GaugeMetricFamily(f"{NS}_servers_ready", "Servers running with ComfyUI ready", value=v.ready)
            depth = GaugeMetricFamily(f"{NS}_generation_queue_depth", "Generations waiting or running",
                                      labels=["status"])
            depth.add_metric(["queued"], v.queued)
            depth.add_metric(["processing"], v.processing)
            yield depth
            yield GaugeMetricFamily(f"{NS}_burn_rate_dollars_per_hour",
                                    "What the fleet costs per hour right now (running + stopped disks)",
                                    value=float(v.burn))
            yield GaugeMetricFamily(f"{NS}_spend_today_dollars", "Spend since 00:00 UTC", value=float(v.today))
            yield GaugeMetricFamily(f"{NS}_spend_month_dollars", "Spend this UTC month", value=float(v.month))
            if v.vast_credit is not None:
                yield GaugeMetricFamily(f"{NS}_vast_credit_dollars", "Credit left at Vast (cached)",
                                        value=float(v.vast_credit))
        hub = self.hub
        yield GaugeMetricFamily(f"{NS}_ws_clients", "Websocket clients connected to /ws",
                                value=hub.clients if hub is not None else 0)
        conns = CounterMetricFamily(f"{NS}_ws_connections", "Websocket connections accepted")
        conns.add_metric([], hub.stats.get("connections", 0) if hub is not None else 0)
        yield conns
        zmq_stats = self.zmq.stats if self.zmq is not None else {}
        sent = CounterMetricFamily(f"{NS}_zmq_messages", "ZeroMQ messages published (events and heartbeats)")
        sent.add_metric([], zmq_stats.get("sent", 0))
        yield sent
        errors = CounterMetricFamily(f"{NS}_zmq_errors", "ZeroMQ sends that failed")
        errors.add_metric([], zmq_stats.get("errors", 0))
        yield errors
        refused = CounterMetricFamily(f"{NS}_rate_limit_refusals", "Requests refused with 429, by category",
                                      labels=["category"])
        if self.limiter is not None:
            for category, n in sorted(getattr(self.limiter, "refusals", {}).items()):
                refused.add_metric([str(category)], n)
        yield refused


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.vast_calls = Counter(f"{NS}_vast_calls", "Vast API calls (each attempt), by endpoint and outcome",
                                  ["endpoint", "outcome"], registry=r)
        self.vast_latency = Histogram(f"{NS}_vast_call_duration_seconds", "Vast API call latency",
                                      ["endpoint"], buckets=CALL_BUCKETS, registry=r)
        self.comfy_calls = Counter(f"{NS}_comfy_calls", "ComfyUI calls (each attempt), by endpoint and outcome",
                                   ["endpoint", "outcome"], registry=r)
        self.comfy_latency = Histogram(f"{NS}_comfy_call_duration_seconds", "ComfyUI call latency",
                                       ["endpoint"], buckets=CALL_BUCKETS, registry=r)
        self.generations = Counter(f"{NS}_generations", "Generations finished, by outcome", ["outcome"],
                                   registry=r)
        self.generation_duration = Histogram(f"{NS}_generation_duration_seconds",
                                             "Duration of finished generations", ["outcome"],
                                             buckets=GENERATION_BUCKETS, registry=r)
        self.events = Counter(f"{NS}_events", "Events published on the bus (to /ws and ZeroMQ), by type",
                              ["type"], registry=r)
        self.cost_actions = Counter(f"{NS}_cost_actions", "Automatic cost-control actions",
                                    ["action", "rule"], registry=r)
        self.live = _Live()
        r.register(self.live)
        self._source: GaugeSource | None = None
        # The labelled children, looked up once per label values (``labels()`` costs a
        # lock and a few checks on every call; these feeds run for every call and event).
        self._vast: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._comfy: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._events: dict[str, Any] = {}
        self._outcomes: dict[str, Any] = {}
        self._durations: dict[str, Any] = {}

    # -- feeds ----------------------------------------------------------------------
    def on_vast_call(self, endpoint: str, outcome: str, seconds: float) -> None:
        key = (endpoint, outcome)
        children = self._vast.get(key)
        if children is None:
            children = self._vast[key] = (self.vast_calls.labels(endpoint, outcome),
                                          self.vast_latency.labels(endpoint))
        children[0].inc()
        children[1].observe(seconds)

    def on_comfy_call(self, endpoint: str, outcome: str, seconds: float) -> None:
        key = (endpoint, outcome)
        children = self._comfy.get(key)
        if children is None:
            children = self._comfy[key] = (self.comfy_calls.labels(endpoint, outcome),
                                           self.comfy_latency.labels(endpoint))
        children[0].inc()
        children[1].observe(seconds)

    def on_event(self, event: Any) -> None:
        """The bus listener: synchronous and cheap."""
        kind = event.type
        counter = self._events.get(kind)
        if counter is None:
            counter = self._events[kind] = self.events.labels(kind)
        counter.inc()
        if kind in (GENERATION_COMPLETED, GENERATION_FAILED):
            data = event.data if isinstance(event.data, dict) else {}
            outcome = str(data.get("status") or ("completed" if kind == GENERATION_COMPLETED else "failed"))
            counter = self._outcomes.get(outcome)
            if counter is None:
                counter = self._outcomes[outcome] = self.generations.labels(outcome)
            counter.inc()
            ms = data.get("durationMs")
            if isinstance(ms, int | float) and ms >= 0:  # a duration series appears with its first value only
                histogram = self._durations.get(outcome)
                if histogram is None:
                    histogram = self._durations[outcome] = self.generation_duration.labels(outcome)
                histogram.observe(ms / 1000)
        elif kind == COST_ACTION:
            data = event.data if isinstance(event.data, dict) else {}
            self.cost_actions.labels(str(data.get("action")), str(data.get("rule"))).inc()

    def bind(self, *, gauges: GaugeSource | None = None, hub: Any = None, zmq: Any = None,
             limiter: Any = None) -> None:
        if gauges is not None:
            self._source = gauges
        self.live.hub, self.live.zmq, self.live.limiter = hub, zmq, limiter

    # -- the scrape -------------------------------------------------------------------
    async def render(self) -> bytes:
        if self._source is not None:
            try:
                self.live.values = await self._source()
            except Exception:
                log.exception("metrics gauges failed")
        return generate_latest(self.registry)
