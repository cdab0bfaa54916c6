"""The commands that change data and tell the other processes: HTTP and WebSocket share them.

Each writes its rows and queues its NOTIFY events in one transaction, so a change
and its announcement are committed together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import Connection

from chatsvc.engine import conversations, events, projects, users
from chatsvc.engine import messages as message_rows
from chatsvc.engine.conversations import Conversation
from chatsvc.engine.messages import Exchange, Message
from chatsvc.engine.projects import Project
from chatsvc.engine.runtime import Runtime
from chatsvc.engine.stream import Stream
from chatsvc.engine.users import User
from chatsvc.errors import NotFound, TokenLimitExceeded, Unavailable, wrap_exceptions


@dataclass(frozen=True)
class Sent:
    """The result of a send; `created` is False when a client_message_id was reused."""

    exchange: Exchange
    created: bool


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
        conversation = conversations.get_visible(conn, user.id, conversation_id)
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
            *_titled(conn, conversation, content),
            events.room_event(
                conversation.project_id,
                conversation.user_id,
                "stream.started",
                conversation_id=conversation_id,
                message_id=answer.id,
                user_id=user.id,
            ),
        ]
        events.send(conn, outbox)
    rt.answerer.start(Stream.for_message(answer, rt.settings.model))
    return Sent(exchange, created=True)


def _titled(conn: Connection[Any], conversation: Conversation, content: str) -> list[events.Event]:
    """An untitled conversation takes its title from its first message (never from reasoning)."""
    if conversation.title:
        return []
    title = conversations.name_untitled(conn, conversation.id, content)
    if title is None:
        return []
    return [_updated(conversation, title)]


def _updated(conversation: Conversation, title: str) -> events.Event:
    return events.room_event(
        conversation.project_id,
        conversation.user_id,
        "conversation.updated",
        conversation_id=conversation.id,
        title=title,
    )


def cancel_conversation(rt: Runtime, user: User, conversation_id: UUID) -> Message:
    """Cancel the active answer; with none, the latest answer as it is (idempotent)."""
    with wrap_exceptions(), rt.pool.connection() as conn:
        conversations.get_visible(conn, user.id, conversation_id)
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
        message = message_rows.get_visible(conn, user.id, message_id)
        if message.is_streaming:
            message = message_rows.request_cancel(conn, message_id) or message
        return message


def create_conversation(
    conn: Connection[Any], user: User, project_id: UUID | None, title: str
) -> Conversation:
    """Create a conversation, private or in a project the user belongs to; tell the room."""
    if project_id is not None:
        projects.get_member_project(conn, user.id, project_id)
    conversation = conversations.create(conn, user.id, project_id, title)
    room_event = events.room_event(
        project_id,
        user.id,
        "conversation.created",
        conversation_id=conversation.id,
        title=conversation.title,
        user_id=user.id,
        created_at=conversation.created_at,
    )
    events.send(conn, [room_event])
    return conversation


def rename_conversation(
    conn: Connection[Any], user: User, conversation_id: UUID, title: str
) -> Conversation:
    """Rename a conversation the user may see; tell its room."""
    conversation = conversations.get_visible(conn, user.id, conversation_id)
    renamed = conversations.rename(conn, conversation.id, title)
    events.send(conn, [_updated(renamed, renamed.title)])
    return renamed


def delete_conversation(conn: Connection[Any], user: User, conversation_id: UUID) -> None:
    """Delete a conversation the user may see, cancelling its active answer first."""
    conversation = conversations.get_visible(conn, user.id, conversation_id)
    active = message_rows.active_in(conn, conversation_id)
    outbox: list[events.Event] = []
    if active is not None:
        message_rows.request_cancel(conn, active.id)
        outbox.append(
            events.Finished(
                conversation_id, active.id, "cancelled", active.content_length, None, None
            )
        )
    conversations.delete(conn, conversation_id)
    outbox.append(events.ConversationDeleted(conversation_id))
    outbox.append(
        events.room_event(
            conversation.project_id,
            conversation.user_id,
            "conversation.deleted",
            conversation_id=conversation_id,
        )
    )
    events.send(conn, outbox)


def add_member(
    conn: Connection[Any], user: User, project_id: UUID, name: str
) -> tuple[Project, bool]:
    """Add a member by user name (any member may); the project, and whether they were added."""
    projects.get_member_project(conn, user.id, project_id)
    member = users.user_by_name(conn, name)
    if member is None:
        raise NotFound(f"No user named {name!r}.")
    added = projects.add_member(conn, project_id, member.id)
    if added:
        joined = events.UserEvent(member.id, "project.joined", {"project_id": str(project_id)})
        events.send(
            conn, [events.project_event(project_id, "member.added", user_id=member.id), joined]
        )
    return projects.get_member_project(conn, user.id, project_id), added


def remove_member(conn: Connection[Any], user: User, project_id: UUID, name: str) -> None:
    """Remove a member by user name (any member may, themselves included)."""
    projects.get_member_project(conn, user.id, project_id)
    member = users.user_by_name(conn, name)
    if member is None or not projects.remove_member(conn, project_id, member.id):
        raise NotFound(f"{name!r} is not a member of this project.")
    # Open project streams of the removed member end: they get nothing more.
    events.send(conn, [events.project_event(project_id, "member.removed", user_id=member.id)])
