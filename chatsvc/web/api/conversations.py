"""Conversations: create, list, read, delete, send a message, status, cancel, and the stream."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from flask import Response

from chatsvc.engine import commands, conversations, status
from chatsvc.engine import messages as message_rows
from chatsvc.engine.conversations import Conversation
from chatsvc.engine.messages import Message
from chatsvc.engine.status import ConversationStatus
from chatsvc.errors import (
    InvalidRequest,
    NotFound,
    StreamActive,
    TokenLimitExceeded,
    ValidationError,
)
from chatsvc.web import schemas, sse
from chatsvc.web.api import bp
from chatsvc.web.auth import current_user
from chatsvc.web.context import connection, runtime
from chatsvc.web.declare import route
from chatsvc.web.event_schemas import CONVERSATION_EVENTS


@route(
    bp,
    "POST",
    "/conversations",
    body=schemas.CreateConversation,
    response=schemas.Conversation,
    status=201,
    errors=(NotFound,),
)
def create_conversation(body: schemas.CreateConversation) -> Conversation:
    """Create a conversation, private or in a project the caller belongs to."""
    with connection() as conn:
        return commands.create_conversation(conn, current_user(), body.project_id, body.title or "")


@route(
    bp,
    "GET",
    "/conversations",
    query=schemas.ConversationsQuery,
    response=schemas.ConversationPage,
)
def list_conversations(query: schemas.ConversationsQuery) -> dict[str, Any]:
    """Visible conversations, newest first, each with is_streaming; page with ?before=."""
    with connection() as conn:
        found = conversations.page(
            conn,
            current_user().id,
            project_id=query.project_id,
            before=query.before,
            limit=query.limit,
        )
    next_before = found[-1].id if len(found) == query.limit else None
    return {"items": found, "next_before": next_before}


@route(
    bp,
    "GET",
    "/conversations/<uuid:conversation_id>",
    response=schemas.ConversationWithMessages,
    errors=(NotFound,),
)
def get_conversation(conversation_id: UUID) -> schemas.ConversationWithMessages:
    """A conversation and its messages, streaming answers with their checkpointed text."""
    with connection() as conn:
        conversation = conversations.get_visible(conn, current_user().id, conversation_id)
        rows = message_rows.current_branch(conn, conversation_id)
    summary = schemas.Conversation.model_validate(conversation)
    return schemas.ConversationWithMessages(**dict(summary), messages=rows)


@route(bp, "DELETE", "/conversations/<uuid:conversation_id>", status=204, errors=(NotFound,))
def delete_conversation(conversation_id: UUID) -> None:
    """Delete a conversation, cancelling its active answer first."""
    with connection() as conn:
        commands.delete_conversation(conn, current_user(), conversation_id)


@route(
    bp,
    "POST",
    "/conversations/<uuid:conversation_id>/messages",
    body=schemas.SendMessage,
    response=schemas.Exchange,
    status=202,
    responses={
        200: "`client_message_id` was already used in this conversation: the same pair, "
        "and nothing is started."
    },
    errors=(NotFound, StreamActive, TokenLimitExceeded),
)
def send_message(conversation_id: UUID, body: schemas.SendMessage) -> tuple[schemas.Exchange, int]:
    """Store the user message and a streaming answer, then generate it in the background."""
    sent = commands.send(
        runtime(),
        current_user(),
        conversation_id,
        body.content,
        model=body.model,
        client_message_id=body.client_message_id,
    )
    return schemas.exchange(sent), 202 if sent.created else 200


@route(
    bp,
    "PUT",
    "/conversations/<uuid:conversation_id>/branch",
    body=schemas.SwitchBranch,
    response=schemas.ConversationWithMessages,
    errors=(NotFound, ValidationError, StreamActive),
)
def switch_branch(
    conversation_id: UUID, body: schemas.SwitchBranch
) -> schemas.ConversationWithMessages:
    """Show the branch through a message, down to the newest message below it."""
    commands.switch_branch(runtime(), current_user(), conversation_id, body.message_id)
    return get_conversation(conversation_id)


@route(
    bp,
    "GET",
    "/conversations/<uuid:conversation_id>/status",
    response=schemas.ConversationStatus,
    errors=(NotFound,),
)
def conversation_status(conversation_id: UUID) -> ConversationStatus:
    """Whether the conversation is streaming, and its latest answer's state."""
    with connection() as conn:
        conversations.get_visible(conn, current_user().id, conversation_id)
        found = status.conversation_status(conn, conversation_id)
    assert found is not None  # every conversation has a row in the view
    return found


@route(
    bp,
    "POST",
    "/conversations/<uuid:conversation_id>/cancel",
    response=Message,
    status=202,
    errors=(NotFound,),
)
def cancel_conversation(conversation_id: UUID) -> Message:
    """Cancel the active answer (idempotent: with none, returns the latest answer)."""
    return commands.cancel_conversation(runtime(), current_user(), conversation_id)


@route(
    bp,
    "GET",
    "/conversations/<uuid:conversation_id>/stream",
    events=CONVERSATION_EVENTS,
    errors=(InvalidRequest, NotFound),
)
def conversation_stream(conversation_id: UUID) -> Response:
    """SSE: the whole conversation, long-lived."""
    with connection() as conn:
        conversations.get_visible(conn, current_user().id, conversation_id)
    return sse.conversation_stream(runtime(), conversation_id)
