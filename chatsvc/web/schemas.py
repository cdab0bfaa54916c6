"""The HTTP contract as types: request bodies, query parameters and response objects.

Each is declared once, as a pydantic model; `declare.route` validates requests
with them (through `parsing.parse`) and serialises responses through them, and
/openapi.json is generated from them. Response models read the engine's rows by
attribute, so a response has exactly the fields declared here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from chatsvc.engine.commands import Sent
from chatsvc.engine.messages import Message
from chatsvc.errors import ApiError
from chatsvc.web.parsing import Body, MessageContent, Name, Query, Text, Title, query_int


def _all_subclasses(cls: type[ApiError]) -> list[type[ApiError]]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_all_subclasses(sub))]


def _error_codes() -> str:
    classes: list[type[ApiError]] = [ApiError, *_all_subclasses(ApiError)]
    codes = sorted({c.code for c in classes} | {"internal_error"})  # the last is app.py's
    return "One of: " + ", ".join(f"`{code}`" for code in codes) + "."


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


class ChooseModel(Body):
    """Optionally, the model to write the answer with (the body may be left out)."""

    model: Text | None = Field(
        default=None,
        description="A litellm model name; by default the model of the answer it replaces "
        "or continues.",
    )


class EditMessage(Body):
    """The new version of a user message; its answer starts streaming."""

    content: MessageContent
    model: Text | None = Field(
        default=None, description="A litellm model name; by default the default model."
    )
    client_message_id: Text | None = Field(default=None, description="An idempotency key.")


class SwitchBranch(Body):
    """The message whose branch the conversation should show."""

    message_id: UUID = Field(
        description="Any message of the conversation: the branch through it, down to the "
        "newest message below it, becomes current."
    )


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
    limit: Annotated[
        int, Field(ge=1, le=200, description="Page size."), BeforeValidator(query_int)
    ] = 50


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
    """A conversation and the messages of the branch it shows, in order (each message's
    `sibling_ids` names its other versions); a streaming answer shows its checkpoint."""

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


def exchange(sent: Sent) -> Exchange:
    """The response to a send or an edit: both messages, and where to follow the answer."""
    answer = sent.exchange.assistant_message
    return Exchange(
        user_message=sent.exchange.user_message,
        assistant_message=answer,
        stream_url=f"/api/messages/{answer.id}/stream",
    )


class Regenerated(Out):
    """The new answer, streaming beside the one it replaces."""

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
