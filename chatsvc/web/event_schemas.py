"""The streaming contract as types: SSE event payloads and WebSocket frames.

The followers produce these payloads (SSE `data:`, or a frame's fields besides
`type`); the declarations here are what /openapi.json publishes for them and
what the tests check real streams against.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from chatsvc.engine.messages import STATUSES, TOOL_STATES, Message
from chatsvc.web.parsing import Body, CompositePosition, MessageContent, Offset, Text

Status = Annotated[str, Field(json_schema_extra={"enum": list(STATUSES)})]


class Event(BaseModel):
    """The data of one event."""

    model_config = ConfigDict(frozen=True)


# --- a message's events -----------------------------------------------------------


class DeltaEvent(Event):
    """`event: delta`: committed answer text; `id:` is the position after it."""

    message_id: UUID
    offset: int = Field(
        ge=0, description="Start offset of `text` in the message content (code points)."
    )
    text: str = Field(min_length=1)


class ReasoningEvent(Event):
    """`event: reasoning`: committed reasoning; `id:` is the (composite) position after it."""

    message_id: UUID
    offset: int = Field(
        ge=0,
        description="Start offset of `text` in the answer's reasoning (its reasoning parts "
        "concatenated, code points); no gap and no overlap, as for `delta`.",
    )
    text: str = Field(min_length=1)


class ToolEvent(Event):
    """`event: tool`: a tool part's new state (the last one received is its current state)."""

    message_id: UUID
    tool_call_id: str = Field(description="The call's id, as the model named it.")
    name: str = Field(description="The tool called.")
    state: Annotated[str, Field(json_schema_extra={"enum": list(TOOL_STATES)})]
    input: Any = Field(
        default=None, description="The arguments: a JSON object, or the text written so far."
    )
    output: Any = Field(default=None, description="With `output-available`: the result.")
    error: str | None = Field(default=None, description="With `output-error`: why.")


class StatusEvent(Event):
    """`event: status`: the answer changed hands — taken over after a crash or a restart,
    or continued by a client (then it streams again from its old end) — (no `id:`)."""

    message_id: UUID
    status: Status
    epoch: int = Field(ge=0)
    resumed: bool


class MessageUsage(Event):
    """Tokens one answer used (across every LLM call made for it, resumes included)."""

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    estimated: bool | None = Field(
        default=None, description="True when the provider reported no usage and it was estimated."
    )


class DoneEvent(Event):
    """`event: done`: the answer ended; the last event of a message stream."""

    message_id: UUID
    status: Status
    content_length: int = Field(
        ge=0,
        description="The final length; also the event's `id:` for an answer of text alone "
        "(with reasoning or tool parts the `id:` is the final composite position).",
    )
    usage: MessageUsage
    error: str | None = Field(
        default=None, description="Present when the answer failed or was interrupted."
    )


class BranchEvent(Event):
    """`event: branch`: the conversation shows another branch, other than by growing (a
    regeneration, an edit, a branch switch, a continuation on another branch); no `id:`.

    Keep the messages you show whose ids are listed, in this order, and drop the others;
    the `message` events that follow bring the listed messages you lack.
    """

    conversation_id: UUID
    message_ids: list[UUID] = Field(description="The messages of the branch now shown, in order.")


# --- the project room -------------------------------------------------------------


class RoomEvent(Event):
    """An event of a project room."""

    project_id: UUID
    conversation_id: UUID


class ConversationCreated(RoomEvent):
    """`event: conversation.created`: a conversation was created in the project."""

    title: str
    user_id: UUID = Field(description="Who created it.")
    created_at: datetime


class ConversationDeleted(RoomEvent):
    """`event: conversation.deleted`: a conversation was deleted."""


class StreamStarted(RoomEvent):
    """`event: stream.started`: an answer started streaming."""

    message_id: UUID
    user_id: UUID = Field(description="Who sent the message.")


class StreamFinished(RoomEvent):
    """`event: stream.finished`: an answer ended."""

    message_id: UUID
    status: Status
    content_length: int = Field(ge=0)


# Event name → the schema of its data, per stream.
MESSAGE_EVENTS: dict[str, Any] = {
    "delta": DeltaEvent,
    "reasoning": ReasoningEvent,
    "tool": ToolEvent,
    "status": StatusEvent,
    "done": DoneEvent,
}
CONVERSATION_EVENTS: dict[str, Any] = {"message": Message, "branch": BranchEvent, **MESSAGE_EVENTS}
PROJECT_EVENTS: dict[str, Any] = {
    "conversation.created": ConversationCreated,
    "conversation.deleted": ConversationDeleted,
    "stream.started": StreamStarted,
    "stream.finished": StreamFinished,
}

# --- WebSocket frames -------------------------------------------------------------


class AuthFrame(Body):
    """Authenticate this connection."""

    type: Literal["auth"]
    token: Text


class SubscribeFrame(Body):
    """Follow a conversation, or one answer from an offset."""

    type: Literal["subscribe"]
    conversation_id: UUID
    message_id: UUID | None = None
    offset: Offset | CompositePosition | None = Field(
        default=None,
        description="Needs `message_id`; where to start in that answer: an integer is an "
        "offset in its content (nothing of its reasoning or tool parts received yet), a "
        "string `<content>.<reasoning>.<tools>` is a composite position as in the `id:` of "
        "the SSE stream of that message.",
    )


class SendFrame(Body):
    """Send a message (as POST /api/conversations/{id}/messages)."""

    type: Literal["send"]
    conversation_id: UUID
    content: MessageContent
    model: Text | None = Field(default=None, description="A litellm model name.")
    client_message_id: Text | None = Field(default=None, description="An idempotency key.")


class CancelFrame(Body):
    """Cancel the conversation's active answer."""

    type: Literal["cancel"]
    conversation_id: UUID


class JoinProjectFrame(Body):
    """Follow a project room."""

    type: Literal["join_project"]
    project_id: UUID


CLIENT_FRAMES: dict[str, type[Body]] = {
    "auth": AuthFrame,
    "subscribe": SubscribeFrame,
    "send": SendFrame,
    "cancel": CancelFrame,
    "join_project": JoinProjectFrame,
}


class DoneFrame(DoneEvent):
    """`done`, with what this connection and the user have used."""

    type: Literal["done"]
    position: str = Field(description="The final position, as in the SSE `id:` of `done`.")
    tokens_used: int = Field(ge=0, description="What the answers sent on this connection used.")
    user_tokens_used: int = Field(ge=0)
    token_limit: int | None = Field(description="Null when unlimited.")


class ErrorFrame(Event):
    """A frame failed; the connection stays usable."""

    type: Literal["error"]
    code: str
    message: str
    request: str | None = Field(default=None, description="The type of the frame it answers.")


# Server frames whose fields are more than `type` plus the event's data.
SERVER_FRAMES: dict[str, type[BaseModel]] = {"done": DoneFrame, "error": ErrorFrame}
