"""Base classes of every model that crosses the wire: camelCase JSON, strict requests."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class WireModel(BaseModel):
    """A response or event body: snake_case in Python, camelCase on the wire."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True)


class RequestModel(WireModel):
    """A request body: unknown fields are refused, not silently dropped."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True, extra="forbid"
    )


class QueryModel(WireModel):
    """Query-string parameters: unknown ones are refused so a typo is not ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True, extra="forbid"
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime | None) -> str | None:
    """UTC ISO-8601 with a ``Z``, milliseconds: the one time format of the API and the store."""
    if dt is None:
        return None
    if dt.tzinfo is not UTC:
        dt = dt.astimezone(UTC)
    if dt.year < 1000:  # strftime writes such a year unpadded: keep its exact output
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    # ``isoformat`` (C, no format string to parse) truncates to milliseconds as ``// 1000``
    # does: "YYYY-MM-DDTHH:MM:SS.mmm+00:00" with the offset replaced by "Z".
    return dt.isoformat(timespec="milliseconds")[:-6] + "Z"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
