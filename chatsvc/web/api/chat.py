"""The Vercel AI SDK chat transport: POST /api/chat and GET /api/chat/{id}/stream (docs/ai-sdk.md).

A drop-in backend for `useChat` with `DefaultChatTransport`: the database holds
the history, so only the last user message of the body is read, and its answer
goes out as the UI message stream (`web/chunks.py`, `web/chat_stream.py`).
"""

from __future__ import annotations

from uuid import UUID

from flask import Response

from chatsvc.engine import chats, commands, conversations
from chatsvc.engine import messages as message_rows
from chatsvc.engine.runtime import Runtime
from chatsvc.errors import (
    ApiError,
    NotFound,
    StreamActive,
    TokenLimitExceeded,
    TooLarge,
    ValidationError,
)
from chatsvc.web import chunks, schemas
from chatsvc.web.api import bp
from chatsvc.web.auth import current_user
from chatsvc.web.chat_stream import ChatStream, respond
from chatsvc.web.context import connection, runtime
from chatsvc.web.declare import route

EVENT_STREAM = "text/event-stream"


def user_text(message: schemas.UIMessage, max_chars: int) -> str:
    """The text of the body's last message, which must be a user's; 422 or 413 otherwise."""
    if message.role != "user":
        raise ValidationError("The last message must be the user's.")
    text = "".join(
        part["text"]
        for part in message.parts
        if part.get("type") == "text" and isinstance(part.get("text"), str)
    )
    if not text:
        raise ValidationError("The last message has no text.")
    if len(text) > max_chars:
        raise TooLarge(f"The message is longer than {max_chars} characters.")
    if "\x00" in text:
        raise ValidationError("The message must not contain NUL characters.")
    return text


@route(
    bp,
    "POST",
    "/chat",
    body=schemas.ChatRequest,
    response=chunks.UIMessageChunk,
    media_type=EVENT_STREAM,
    errors=(NotFound, StreamActive, TokenLimitExceeded),
)
def chat(body: schemas.ChatRequest) -> Response:
    """The AI SDK transport: send (or edit, or regenerate) and stream the answer."""
    rt, user = runtime(), current_user()
    if body.trigger == "regenerate-message":
        with connection() as conn:
            conversation = chats.existing(conn, user, body.id)
            answer_id = chats.to_regenerate(conn, user, conversation.id, body.messageId)
        sent = commands.regenerate(rt, user, answer_id, model=body.model)
        return stream(rt, sent.exchange.assistant_message.id)
    last = body.messages[-1]
    text = user_text(last, rt.settings.max_message_chars)
    if body.messageId is not None:
        # An edit, even though the last message carries that id (the SDK's way).
        with connection() as conn:
            conversation = chats.existing(conn, user, body.id)
            question = chats.named(conn, user, conversation.id, body.messageId)
        sent = commands.edit(rt, user, question.id, text, model=body.model)
        return stream(rt, sent.exchange.assistant_message.id)
    with connection() as conn:
        conversation, created = chats.find_or_create(conn, user, body.id, text)
    try:
        sent = commands.send(
            rt, user, conversation.id, text, model=body.model, client_message_id=last.id
        )
    except ApiError:
        if created:  # a refused first message leaves no conversation behind
            with connection() as conn:
                conversations.delete(conn, conversation.id)
        raise
    return stream(rt, sent.exchange.assistant_message.id)


@route(
    bp,
    "GET",
    "/chat/<path:chat_id>/stream",
    response=chunks.UIMessageChunk,
    media_type=EVENT_STREAM,
    responses={204: "Nothing streams in this chat, or the caller has no chat of this id."},
)
def chat_stream(chat_id: str) -> Response:
    """The AI SDK transport's resume: the streaming answer replayed from `start`, then live."""
    with connection() as conn:
        conversation = chats.find(conn, current_user(), chat_id)
        active = None if conversation is None else message_rows.active_in(conn, conversation.id)
    if active is None:
        return Response(status=204)
    return stream(runtime(), active.id)


def stream(rt: Runtime, message_id: UUID) -> Response:
    """The UI message stream of one answer, from `start`."""
    follower = ChatStream(rt.sources, message_id)
    return respond(follower, follower.begin())
