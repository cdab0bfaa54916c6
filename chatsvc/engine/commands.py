"""Sending a message and cancelling an answer: the one path HTTP and WebSocket share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import Connection

from chatsvc.engine import conversations, events, users
from chatsvc.engine import messages as message_rows
from chatsvc.engine.conversations import Conversation
from chatsvc.engine.messages import Exchange, Message
from chatsvc.engine.runtime import Runtime
from chatsvc.engine.stream import Stream
from chatsvc.engine.users import User
from chatsvc.errors import NotFound, TokenLimitExceeded, Unavailable, wrap_exceptions


@dataclass(frozen=True)
class Sent:
    """The result of a send; `created` is False when a client_message_id was reused."""

    exchange: Exchange
    created: bool

    def to_json(self) -> dict[str, Any]:
        """The body of POST /api/conversations/{id}/messages."""
        answer = self.exchange.assistant_message
        return {
            "user_message": self.exchange.user_message.to_json(),
            "assistant_message": answer.to_json(),
            "stream_url": f"/api/messages/{answer.id}/stream",
        }


def visible(conn: Connection[Any], user: User, conversation_id: UUID) -> Conversation:
    """A conversation the user may see, or NotFound."""
    conversation = conversations.get(conn, user.id, conversation_id)
    if conversation is None:
        raise NotFound("No such conversation.")
    return conversation


def send(
    rt: Runtime,
    user: User,
    conversation_id: UUID,
    content: str,
    *,
    model: str | None = None,
    client_message_id: str | None = None,
) -> Sent:
    """Store the user message and a streaming answer, then generate it in the background."""
    if rt.hub.closing:
        raise Unavailable("This server is shutting down; retry on another.")
    with wrap_exceptions(), rt.pool.connection() as conn:
        conversation = visible(conn, user, conversation_id)
        if client_message_id is not None:
            earlier = message_rows.exchange_by_client_id(conn, conversation_id, client_message_id)
            if earlier is not None:
                return Sent(earlier, created=False)
        if users.usage(conn, user.id).exhausted:
            raise TokenLimitExceeded()
        exchange = message_rows.create_exchange(
            conn,
            conversation_id=conversation_id,
            user_id=user.id,
            content=content,
            model=model or rt.settings.model,
            client_message_id=client_message_id,
            owner=rt.owner,
            lease_s=rt.settings.lease_s,
        )
        if exchange is None:  # a concurrent send with the same client_message_id won
            earlier = message_rows.exchange_by_client_id(
                conn, conversation_id, client_message_id or ""
            )
            assert earlier is not None
            return Sent(earlier, created=False)
        answer = exchange.assistant_message
        outbox: list[events.Event] = [
            events.MessageCreated(conversation_id, exchange.user_message.id),
            events.MessageCreated(conversation_id, answer.id),
        ]
        if conversation.project_id is not None:
            outbox.append(
                events.project_event(
                    conversation.project_id,
                    "stream.started",
                    conversation_id=conversation_id,
                    message_id=answer.id,
                    user_id=user.id,
                )
            )
        events.send(conn, outbox)
    rt.answerer.start(Stream.for_message(answer, rt.settings.model))
    return Sent(exchange, created=True)


def cancel_conversation(rt: Runtime, user: User, conversation_id: UUID) -> Message:
    """Cancel the active answer; with none, the latest answer as it is (idempotent)."""
    with wrap_exceptions(), rt.pool.connection() as conn:
        visible(conn, user, conversation_id)
        active = message_rows.active_in(conn, conversation_id)
        if active is not None:
            return message_rows.request_cancel(conn, active.id) or active
        answers = [
            m for m in message_rows.in_conversation(conn, conversation_id) if m.role == "assistant"
        ]
        if not answers:
            raise NotFound("This conversation has no answer to cancel.")
        return answers[-1]


def cancel_message(rt: Runtime, user: User, message_id: UUID) -> Message:
    """Record the intent to cancel an answer; its owner stops within a checkpoint interval."""
    with wrap_exceptions(), rt.pool.connection() as conn:
        message = message_rows.get(conn, user.id, message_id)
        if message is None:
            raise NotFound("No such message.")
        if message.is_streaming:
            message = message_rows.request_cancel(conn, message_id) or message
        return message
