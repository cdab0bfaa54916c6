"""Reading requests into the declared types, and the one translation of pydantic's errors.

The field types here carry the rules every request shares (bounded strings that
Postgres can store, strict integers); `parse` validates against any declared
model and turns a `pydantic.ValidationError` into the error body our clients
know: the same codes, statuses and sentences whichever transport asked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, TypeVar

import annotated_types
import pydantic
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from chatsvc.config import Settings
from chatsvc.engine.positions import parse_offset
from chatsvc.errors import ApiError, InvalidJson, InvalidRequest, TooLarge, ValidationError

M = TypeVar("M", bound="Request")

# --- field types ------------------------------------------------------------------


def _storable(value: str) -> str:
    # Postgres text cannot hold NUL; pydantic already refuses unpaired surrogates.
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "must not contain NUL characters.")
    return value


# What _storable enforces, said in the description (the validator keeps its own message).
NO_NUL: dict[str, Any] = {"pattern": "^[^\\x00]*$"}

# Strings of bounded length (in code points), storable in Postgres.
Name = Annotated[
    StrictStr,
    Field(min_length=1, max_length=64, json_schema_extra=NO_NUL),
    AfterValidator(_storable),
]
Text = Annotated[
    StrictStr,
    Field(min_length=1, max_length=200, json_schema_extra=NO_NUL),
    AfterValidator(_storable),
]
Title = Annotated[
    StrictStr, Field(max_length=200, json_schema_extra=NO_NUL), AfterValidator(_storable)
]


def _within_message_limit(value: str, info: ValidationInfo) -> str:
    settings: Settings | None = (info.context or {}).get("settings")
    limit = settings.max_message_chars if settings else Settings.max_message_chars
    if len(value) > limit:
        raise PydanticCustomError(
            "too_large", "is longer than {max_length} characters.", {"max_length": limit}
        )
    return value


# The limit comes from the settings at validation time; the description shows the default.
MessageContent = Annotated[
    StrictStr,
    Field(
        min_length=1,
        description=(
            f"1 to CHATSVC_MAX_MESSAGE_CHARS (default {Settings.max_message_chars}) characters; "
            "longer is 413. No NUL characters."
        ),
        json_schema_extra={"maxLength": Settings.max_message_chars, **NO_NUL},
    ),
    AfterValidator(_within_message_limit),
    AfterValidator(_storable),
]


def query_int(value: Any, info: ValidationInfo) -> Any:
    """A query parameter's digits as an int, by the strict parser stream offsets use."""
    return parse_offset(value, str(info.field_name)) if isinstance(value, str) else value


def _offset(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PydanticCustomError("invalid_request", "must be a non-negative integer.")
    return value


# An offset in a JSON frame: a JSON integer, not a string of digits.
Offset = Annotated[int, BeforeValidator(_offset), Field(ge=0)]

# A composite stream position in a JSON frame, as an SSE event's `id:` spells it.
CompositePosition = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{1,12}\.[0-9]{1,12}\.[0-9]{1,12}$",
        description="`<content>.<reasoning>.<tools>`: code points of text and of reasoning "
        "already received, and how many tool part changes.",
    ),
]

# --- parsing --------------------------------------------------------------------


class Request(BaseModel):
    """Values a client sent; `absent` says which count as not sent at all."""

    model_config = ConfigDict(frozen=True)
    error: ClassVar[type[ApiError]] = ValidationError
    noun: ClassVar[str] = "Field"

    @classmethod
    def absent(cls, name: str, value: Any) -> bool:
        """Whether this value means the same as leaving the field out."""
        return False

    @model_validator(mode="before")
    @classmethod
    def _drop_absent(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if not cls.absent(k, v)}
        return data


class Body(Request):
    """A JSON object with exactly these fields; a null value counts as absent."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def absent(cls, name: str, value: Any) -> bool:
        """A null known field (a null unknown one is still unknown)."""
        return value is None and name in cls.model_fields


class Query(Request):
    """Query parameters: an empty value is a value, refused like any malformed one (never
    taken as absent, which would quietly ignore a client's mistake); unknown ones are ignored."""

    model_config = ConfigDict(extra="ignore")
    error = InvalidRequest
    noun = "Query parameter"


# What follows "Field 'x' " in the message for each pydantic error type.
PHRASES = {
    "missing": "is required.",
    "string_type": "must be a string.",
    "string_unicode": "contains an unpaired surrogate.",
    "string_too_short": "must not be empty.",
    "string_too_long": "is longer than {max_length} characters.",
    "uuid_type": "must be a UUID.",
    "uuid_parsing": "must be a UUID.",
    "int_type": "must be a non-negative integer.",
    "int_parsing": "must be a non-negative integer.",
    "greater_than_equal": "must be between {low} and {high}.",
    "less_than_equal": "must be between {low} and {high}.",
}
# Error types that are not the model's usual error.
CLASSES: dict[str, type[ApiError]] = {"too_large": TooLarge, "invalid_request": InvalidRequest}


def parse_json(raw: bytes | str) -> Any:
    """JSON text as a value; InvalidJson if it is not JSON."""
    try:
        return json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJson(f"The request body is not valid JSON: {exc}.") from None


def parse(model: type[M], data: Any, settings: Settings | None = None) -> M:
    """`data` validated as `model`, or the ApiError our clients expect (400, 413 or 422)."""
    try:
        return model.model_validate(data, context={"settings": settings})
    except pydantic.ValidationError as exc:
        raise _translate(model, exc) from None


def _translate(model: type[Request], exc: pydantic.ValidationError) -> ApiError:
    errors = exc.errors(include_url=False)
    error_class, noun = model.error, model.noun
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        return error_class(f"Unknown field {unknown[0]!r}.")
    first = errors[0]
    if not first["loc"]:
        return error_class("The request body must be a JSON object.")
    name = str(first["loc"][0])
    kind = first["type"]
    if kind in PHRASES:
        phrase = PHRASES[kind].format(**{**_bounds(model, name), **first.get("ctx", {})})
    else:  # our own PydanticCustomErrors carry their phrase
        phrase = first["msg"]
    return CLASSES.get(kind, error_class)(f"{noun} {name!r} {phrase}")


def _bounds(model: type[BaseModel], name: str) -> dict[str, Any]:
    field = model.model_fields.get(name)
    found: dict[str, Any] = {}
    for meta in field.metadata if field else ():
        if isinstance(meta, annotated_types.Ge):
            found["low"] = meta.ge
        if isinstance(meta, annotated_types.Le):
            found["high"] = meta.le
    return found
