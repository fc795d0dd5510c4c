"""Route modules. Each module declares a ``routes`` table; ``all_routes`` collects them."""

from __future__ import annotations

import importlib

from socialsync.daemon.api.registry import RouteSpec

ROUTE_MODULES = (
    "system_routes",
    "auth_routes",
    "events_routes",
    "servers_routes",
    "analytics_routes",
    "models_routes",
    "workflows_routes",
    "generations_routes",
    "queue_routes",
    "images_routes",
)


def all_routes() -> list[RouteSpec]:
    specs: list[RouteSpec] = []
    for name in ROUTE_MODULES:
        module = importlib.import_module(f"socialsync.daemon.api.{name}")
        specs.extend(module.routes.specs)
    return specs
