"""The OpenAPI 3.1 document, generated from the route registry and the wire models.

``python -m socialsync.daemon.api.openapi > daemon/api/openapi.json`` refreshes the
committed copy; a test fails when it is stale."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from pydantic import TypeAdapter

from socialsync.common.errors import ErrorBody

PARAM = re.compile(r"{(\w+)}")
REF = "#/components/schemas/{model}"


def build_openapi(specs) -> dict[str, Any]:
    from socialsync.daemon import __version__

    inputs: list[tuple[Any, str, TypeAdapter]] = [(("error", "serialization"), "serialization", TypeAdapter(ErrorBody))]
    for i, spec in enumerate(specs):
        if spec.body is not None:
            inputs.append(((i, "body"), "validation", TypeAdapter(spec.body)))
        if spec.query is not None:
            inputs.append(((i, "query"), "validation", TypeAdapter(spec.query)))
        if spec.response is not None:
            inputs.append(((i, "response"), "serialization", TypeAdapter(spec.response)))
    key_map, defs = TypeAdapter.json_schemas(
        [(key, mode, adapter) for key, mode, adapter in inputs], by_alias=True, ref_template=REF
    )
    schemas = defs.get("$defs", {})
    error_ref = key_map[(("error", "serialization"), "serialization")]

    def error(description: str) -> dict:
        return {"description": description, "content": {"application/json": {"schema": error_ref}}}

    paths: dict[str, dict] = {}
    order = sorted(range(len(specs)), key=lambda k: (specs[k].path, specs[k].method))
    for idx in order:
        spec = specs[idx]
        op: dict[str, Any] = {
            "operationId": f"{spec.method.lower()}_{spec.handler.__name__}",
            "summary": spec.summary,
            "tags": [spec.tag] if spec.tag else [],
        }
        params = [
            {"name": name, "in": "path", "required": True,
             "schema": {"type": "integer", "minimum": 0} if name.endswith("id") or name.endswith("Id")
             else {"type": "string"}}
            for name in PARAM.findall(spec.path)
        ]
        if spec.query is not None:
            qschema = key_map[((idx, "query"), "validation")]
            qschema = schemas.get(qschema["$ref"].rsplit("/", 1)[-1], qschema) if "$ref" in qschema else qschema
            required = set(qschema.get("required", []))
            for name, prop in qschema.get("properties", {}).items():
                params.append({"name": name, "in": "query", "required": name in required, "schema": prop})
        if params:
            op["parameters"] = params
        if spec.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": key_map[((idx, "body"), "validation")]}},
            }
        responses: dict[str, Any] = {}
        if spec.websocket:
            responses["101"] = {"description": "Switching protocols to a websocket"}
        elif spec.response is not None:
            content_type = "application/json"
            responses[str(spec.status)] = {
                "description": "Success",
                "content": {content_type: {"schema": key_map[((idx, "response"), "serialization")]}},
            }
        else:
            responses[str(spec.status)] = {"description": "Success"}
        if spec.body is not None or spec.query is not None or spec.method != "GET":
            responses["400"] = error("Invalid input")
        if spec.role is not None:
            responses["401"] = error("Missing or invalid credentials")
            responses["403"] = error("Role too low")
            op["security"] = [{"bearer": []}, {"apiKey": []}, {"session": []}]
        else:
            op["security"] = []
        if PARAM.search(spec.path):
            responses["404"] = error("Not found")
        for status in spec.errors:
            responses.setdefault(str(status), error("Refused"))
        responses["429"] = error("Rate limit exceeded")
        responses["500"] = error("Internal error")
        op["responses"] = responses
        paths.setdefault(spec.path, {})[spec.method.lower()] = op

    return {
        "openapi": "3.1.0",
        "info": {"title": "SocialSync API", "version": __version__},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "session": {"type": "apiKey", "in": "cookie", "name": "socialsync_session"},
            },
        },
    }


def main() -> None:
    from socialsync.daemon.api import all_routes

    json.dump(build_openapi(all_routes()), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
