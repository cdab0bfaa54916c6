"""The HTTP contract as types: request bodies, query parameters and response objects.

Each is declared once, as a pydantic model; `declare.route` validates requests
with them and serialises responses through them, and /openapi.json is generated
from them. A null value for an optional field counts as absent, and any
`pydantic.ValidationError` becomes one of our error bodies in `parse`, the one
place where that translation happens.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, ClassVar, TypeVar
from uuid import UUID

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
from chatsvc.engine.messages import Message
from chatsvc.engine.positions import parse_offset
from chatsvc.errors import (
    ApiError,
    InvalidJson,
    InvalidRequest,
    TooLarge,
    ValidationError,
)

M = TypeVar("M", bound=BaseModel)

# --- field types ------------------------------------------------------------------


def _storable(value: str) -> str:
    # Postgres text cannot hold NUL; pydantic already refuses unpaired surrogates.
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "must not contain NUL characters.")
    return value


# Strings of bounded length (in code points), storable in Postgres.
Name = Annotated[StrictStr, Field(min_length=1, max_length=64), AfterValidator(_storable)]
Text = Annotated[StrictStr, Field(min_length=1, max_length=200), AfterValidator(_storable)]
Title = Annotated[StrictStr, Field(max_length=200), AfterValidator(_storable)]


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
        json_schema_extra={"maxLength": Settings.max_message_chars},
    ),
    AfterValidator(_within_message_limit),
    AfterValidator(_storable),
]


def _query_int(value: Any, info: ValidationInfo) -> Any:
    # The one strict integer parser, shared with stream offsets.
    return parse_offset(value, str(info.field_name)) if isinstance(value, str) else value


QueryInt = Annotated[int, BeforeValidator(_query_int)]


def _offset(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PydanticCustomError("invalid_request", "must be a non-negative integer.")
    return value


# An offset in a JSON frame: a JSON integer, not a string of digits.
Offset = Annotated[int, BeforeValidator(_offset), Field(ge=0)]

# --- parsing --------------------------------------------------------------------


class Body(BaseModel):
    """A JSON object with exactly these fields; a null value counts as absent."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    error: ClassVar[type[ApiError]] = ValidationError
    noun: ClassVar[str] = "Field"

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k not in cls.model_fields}
        return data


class Query(BaseModel):
    """Query parameters; an empty value counts as absent, unknown ones are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    error: ClassVar[type[ApiError]] = InvalidRequest
    noun: ClassVar[str] = "Query parameter"

    @model_validator(mode="before")
    @classmethod
    def _empty_is_absent(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if v != ""}
        return data


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


def _all_subclasses(cls: type[ApiError]) -> list[type[ApiError]]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_all_subclasses(sub))]


def _error_codes() -> str:
    classes: list[type[ApiError]] = [ApiError, *_all_subclasses(ApiError)]
    codes = sorted({c.code for c in classes} | {"internal_error"})  # the last is app.py's
    return "One of: " + ", ".join(f"`{code}`" for code in codes) + "."


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


def _translate(model: type[BaseModel], exc: pydantic.ValidationError) -> ApiError:
    errors = exc.errors(include_url=False)
    error_class: type[ApiError] = getattr(model, "error", ValidationError)
    noun: str = getattr(model, "noun", "Field")
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


# --- request bodies ---------------------------------------------------------------


class CreateSession(Body):
    """An API token to trade for a session cookie."""

    token: Text


class CreateProject(Body):
    """A new project."""

    name: Text


class AddMember(Body):
    """Who to add to a project."""

    user: Name = Field(description="A user name.")


class CreateConversation(Body):
    """A new conversation: private without `project_id`, shared with its members with one."""

    project_id: UUID | None = None
    title: Title | None = None


class SendMessage(Body):
    """A message to send; its answer starts streaming."""

    content: MessageContent
    model: Text | None = Field(default=None, description="A litellm model name.")
    client_message_id: Text | None = Field(default=None, description="An idempotency key.")


# --- query parameters -------------------------------------------------------------


class PageQuery(Query):
    """Where a page of conversations starts."""

    before: UUID | None = Field(
        default=None,
        description="Only conversations older than this one (the previous page's `next_before`).",
    )


class ConversationsQuery(PageQuery):
    """A page of conversations."""

    project_id: UUID | None = Field(default=None, description="Only this project's conversations.")
    limit: Annotated[QueryInt, Field(ge=1, le=200, description="Page size.")] = 50


# --- responses --------------------------------------------------------------------


class Out(BaseModel):
    """A response object, read from an engine row's attributes."""

    model_config = ConfigDict(from_attributes=True, frozen=True)


class User(Out):
    """An account."""

    id: UUID
    name: str = Field(min_length=1, max_length=64)
    is_admin: bool
    token_limit: int | None = Field(description="Null when unlimited.")
    created_at: datetime


class Session(Out):
    """Signed in; the session cookie is set."""

    user: User


class Project(Out):
    """A shared space: its conversations are visible to every member."""

    id: UUID
    name: str = Field(min_length=1, max_length=200)
    created_by: UUID
    created_at: datetime
    members: list[str] = Field(description="Member user names, in the order they joined.")


class ProjectList(Out):
    """Projects the caller belongs to, newest first."""

    items: list[Project]


class Conversation(Out):
    """A conversation, and whether an answer is streaming in it."""

    id: UUID
    user_id: UUID = Field(description="The creator.")
    project_id: UUID | None = Field(description="Null for a conversation private to its creator.")
    title: str = Field(max_length=200)
    created_at: datetime
    is_streaming: bool
    active_message_id: UUID | None = Field(description="The answer streaming now, if any.")


class ConversationWithMessages(Conversation):
    """A conversation and every message, in order; a streaming answer shows its checkpoint."""

    messages: list[Message]


class ConversationPage(Out):
    """Conversations, newest first."""

    items: list[Conversation]
    next_before: UUID | None = Field(
        description="Pass as `before` for the next page; null when this page was not full."
    )


class ConversationStatus(Out):
    """Whether a conversation is streaming, and the state of its latest answer."""

    conversation_id: UUID
    is_streaming: bool
    active_message_id: UUID | None = Field(description="The answer streaming now, if any.")
    message_id: UUID | None = Field(description="The latest answer, streaming or not.")
    status: str | None = Field(description="The latest answer's status.")
    content_length: int = Field(
        ge=0, description="Committed length of the latest answer (0 without one)."
    )
    epoch: int | None
    started_at: datetime | None
    last_checkpoint_at: datetime | None
    lease_expires_at: datetime | None


class Exchange(Out):
    """A user message and the streaming answer it asked for."""

    user_message: Message
    assistant_message: Message
    stream_url: str = Field(description="`/api/messages/{assistant_message.id}/stream`.")


class ActiveStream(Out):
    """One answer streaming now (a row of the `active_streams` view)."""

    message_id: UUID
    conversation_id: UUID
    owner: str | None = Field(description="The process generating the answer.")
    epoch: int
    started_at: datetime
    last_checkpoint_at: datetime | None
    lease_expires_at: datetime | None
    content_length: int = Field(ge=0, description="Characters committed so far.")
    age_s: float = Field(description="Seconds since the answer started.")
    cancel_requested: bool
    resume_count: int = Field(description="Takeovers so far.")
    model: str | None


class ActiveStreamList(Out):
    """Answers streaming now that the caller may see, oldest first (all of them for an admin)."""

    items: list[ActiveStream]


class Usage(Out):
    """Tokens the caller has used, and their limit."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int = Field(description="Compared with `token_limit`.")
    token_limit: int | None = Field(description="Null when unlimited.")


class Health(Out):
    """The service's state: `ok` (alive) or `ready`."""

    status: str


class ErrorDetail(Out):
    """What went wrong."""

    code: str = Field(pattern="^[a-z][a-z0-9_]*$", description=_error_codes())
    message: str = Field(min_length=1, description="A human sentence.")


class Error(Out):
    """Every error response has this body."""

    error: ErrorDetail
