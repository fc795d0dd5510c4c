"""Shared helpers for the Vast client and simulator tests (real sockets on 127.0.0.1)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from socialsync.daemon.sim.clock import ManualClock
from socialsync.daemon.sim.vast import SimRequest, VastSim
from socialsync.daemon.vast import RetryPolicy, VastClient

KEY = "vk_test_9f8e7d6c5b4a39281706f5e4d3c2b1a0"

#: Short, exact (no jitter) backoff so retry tests stay fast and their delays are assertable.
FAST_RETRY = RetryPolicy(max_attempts=4, base=0.05, factor=2.0, cap=1.0, jitter=0.0, deadline=10.0)


@asynccontextmanager
async def running_sim(clock: ManualClock | None = None, **kwargs: Any) -> AsyncIterator[VastSim]:
    sim = VastSim(api_key=kwargs.pop("api_key", KEY), clock=clock or ManualClock(), **kwargs)
    await sim.start("127.0.0.1", 0)
    try:
        yield sim
    finally:
        await sim.stop()


def make_client(sim: VastSim, **kwargs: Any) -> VastClient:
    kwargs.setdefault("pacing", {})
    kwargs.setdefault("retry", FAST_RETRY)
    kwargs.setdefault("timeout", 5.0)
    kwargs.setdefault("logs_poll_interval", 0.01)
    return VastClient(kwargs.pop("api_key", KEY), base_url=sim.base_url, **kwargs)


def gaps(requests: list[SimRequest]) -> list[float]:
    """Real seconds between consecutive recorded requests."""
    return [b.mono - a.mono for a, b in itertools.pairwise(requests)]


async def raw(
    sim: VastSim,
    method: str,
    path: str,
    *,
    key: str | None = KEY,
    json_body: Any = None,
    params: Mapping[str, str] | None = None,
) -> tuple[int, str, Any, Mapping[str, str]]:
    """One plain HTTP request to the sim: ``(status, content_type_header, decoded_body, headers)``."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as session:
        async with session.request(
            method, sim.base_url + path, json=json_body, params=params, headers=headers
        ) as resp:
            text = await resp.text()
            ctype = resp.headers.get("Content-Type", "")
            try:
                body: Any = await resp.json(content_type=None)
            except ValueError:
                body = text
            return resp.status, ctype, body, resp.headers
