"""Reading requests: JSON bodies with exactly the expected fields, and query parameters."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from flask import request

from chatsvc.config import Settings
from chatsvc.engine.positions import parse_offset
from chatsvc.errors import (
    InvalidJson,
    InvalidRequest,
    TooLarge,
    UnsupportedMediaType,
    ValidationError,
)


@dataclass(frozen=True)
class Field:
    """One field of a JSON body: its parser, and whether it must be present."""

    parse: Callable[[str, Any], Any]
    required: bool = False


def json_object(fields: dict[str, Field]) -> dict[str, Any]:
    """The request's JSON object with exactly these fields, parsed; raises 415, 400 or 422."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType()
    return fields_of(parse_json(request.get_data(cache=False)), fields)


def parse_json(raw: bytes | str) -> Any:
    """JSON text as a value; InvalidJson if it is not JSON."""
    try:
        return json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJson(f"The request body is not valid JSON: {exc}.") from None


def fields_of(
    body: Any, fields: dict[str, Field], *, ignore: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A JSON object with exactly these fields (besides `ignore`), parsed; 422 otherwise."""
    if not isinstance(body, dict):
        raise ValidationError("The request body must be a JSON object.")
    unknown = sorted(set(body) - set(fields) - set(ignore))
    if unknown:
        raise ValidationError(f"Unknown field {unknown[0]!r}.")
    parsed: dict[str, Any] = {}
    for name, spec in fields.items():
        if name not in body or body[name] is None:
            if spec.required:
                raise ValidationError(f"Field {name!r} is required.")
            parsed[name] = None
            continue
        parsed[name] = spec.parse(name, body[name])
    return parsed


def text(
    min_chars: int = 0, max_chars: int = 200, *, too_long: type[Exception] = ValidationError
) -> Callable[[str, Any], str]:
    """A string field of bounded length, storable in Postgres."""

    def parse(name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise ValidationError(f"Field {name!r} must be a string.")
        if len(value) < min_chars:
            raise ValidationError(f"Field {name!r} must not be empty.")
        if len(value) > max_chars:
            raise too_long(f"Field {name!r} is longer than {max_chars} characters.")
        if "\x00" in value:
            raise ValidationError(f"Field {name!r} must not contain NUL characters.")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(f"Field {name!r} contains an unpaired surrogate.") from None
        return value

    return parse


def uuid_field(name: str, value: Any) -> UUID:
    """A UUID given as a string."""
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            pass
    raise ValidationError(f"Field {name!r} must be a UUID.")


def query_uuid(name: str) -> UUID | None:
    """An optional UUID query parameter."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        return UUID(raw)
    except ValueError:
        raise InvalidRequest(f"Query parameter {name!r} must be a UUID.") from None


def query_int(name: str, default: int, low: int, high: int) -> int:
    """An optional integer query parameter within [low, high]."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    value = parse_offset(raw, name)
    if not low <= value <= high:
        raise InvalidRequest(f"Query parameter {name!r} must be between {low} and {high}.")
    return value


def send_fields(settings: Settings) -> dict[str, Field]:
    """The fields of a send, over HTTP or WebSocket."""
    return {
        "content": Field(text(1, settings.max_message_chars, too_long=TooLarge), required=True),
        "model": Field(text(1, 200)),
        "client_message_id": Field(text(1, 200)),
    }
