"""The commands that change data and tell the other processes: HTTP and WebSocket share them.

Each writes its rows and queues its NOTIFY events in one transaction, so a change
and its announcement are committed together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg import Connection

from chatsvc.engine import (
    continuation,
    conversations,
    events,
    history,
    limits,
    models,
    projects,
    tree,
    users,
)
from chatsvc.engine import messages as message_rows
from chatsvc.engine.conversations import Conversation
from chatsvc.engine.history import Branch
from chatsvc.engine.leases import Claim
from chatsvc.engine.messages import Exchange, Message, NewAnswer
from chatsvc.engine.projects import Project
from chatsvc.engine.runtime import Runtime
from chatsvc.engine.stream import Stream
from chatsvc.engine.users import User
from chatsvc.errors import (
    NotFound,
    StreamActive,
    TokenLimitExceeded,
    Unavailable,
    ValidationError,
    unique_violation_of,
    wrap_exceptions,
)


@dataclass(frozen=True)
class Sent:
    """The result of a send, an edit or a regeneration; `created` is False when a
    client_message_id was reused (nothing was started). A regeneration's user message is
    the question the answer answers."""

    exchange: Exchange
    created: bool
    # The new answer's branch as the exchange's transaction read it (its prompt).
    branch: Branch | None = None


def send(
    rt: Runtime,
    user: User,
    conversation_id: UUID,
    content: str,
    *,
    model: str | None = None,
    client_message_id: str | None = None,
) -> Sent:
    """Store the user message after the current branch's last message, and a streaming
    answer; generate it in the background."""
    _accepting(rt)
    model = models.choose(rt.settings, model)
    with wrap_exceptions(), rt.pool.connection() as conn:
        conversation = conversations.get_visible(conn, user.id, conversation_id)
        earlier = _earlier(conn, conversation_id, client_message_id)
        if earlier is not None:
            return earlier
        _within_budget(rt, conn, user)
        leaf = tree.lock(conn, conversation_id)
        sent = _exchange(
            rt,
            conn,
            conversation,
            user,
            leaf,
            content=content,
            client_message_id=client_message_id,
            model=model,
            moved=False,
        )
    return _started(rt, sent)


def regenerate(rt: Runtime, user: User, message_id: UUID, *, model: str | None = None) -> Sent:
    """A new answer beside an answer (same question), on a branch that becomes current."""
    _accepting(rt)
    with wrap_exceptions(), rt.pool.connection() as conn:
        answer, conversation = _version_of(
            conn,
            user,
            message_id,
            "assistant",
            "Only an answer can be regenerated; a question is edited.",
        )
        if answer.parent_id is None:
            raise ValidationError("Only an answer can be regenerated; a question is edited.")
        model = models.choose(rt.settings, model or answer.model)
        _within_budget(rt, conn, user)
        sent = _branch_off(rt, conn, conversation, user, answer.parent_id, None, None, model)
    return _started(rt, sent)


def edit(
    rt: Runtime,
    user: User,
    message_id: UUID,
    content: str,
    *,
    model: str | None = None,
    client_message_id: str | None = None,
) -> Sent:
    """A new version of a user message (same parent) and its answer, on a branch that
    becomes current; the old version and what followed it stay as they were."""
    _accepting(rt)
    model = models.choose(rt.settings, model)
    with wrap_exceptions(), rt.pool.connection() as conn:
        question, conversation = _version_of(
            conn,
            user,
            message_id,
            "user",
            "Only a user message can be edited; an answer is regenerated.",
        )
        earlier = _earlier(conn, conversation.id, client_message_id)
        if earlier is not None:
            return earlier
        _within_budget(rt, conn, user)
        sent = _branch_off(
            rt, conn, conversation, user, question.parent_id, content, client_message_id, model
        )
    return _started(rt, sent)


def continue_answer(
    rt: Runtime, user: User, message_id: UUID, *, model: str | None = None
) -> Message:
    """Stream a stopped answer again (epoch + 1), its new text appended at its old end."""
    _accepting(rt)
    with wrap_exceptions(), rt.pool.connection() as conn:
        message = message_rows.get_visible(conn, user.id, message_id)
        if message.role != "assistant":
            raise ValidationError("Only an answer can be continued.")
        if message.status not in continuation.STOPPED:
            raise ValidationError(
                f"Only a stopped answer (cancelled, interrupted or failed) can be continued; "
                f"this one is {message.status}."
            )
        conversation = conversations.get_visible(conn, user.id, message.conversation_id)
        model = models.choose(rt.settings, model or message.model)
        _within_budget(rt, conn, user)
        with conn.transaction():
            leaf = tree.lock(conn, conversation.id)
            if not tree.is_leaf(conn, message_id):
                raise ValidationError(
                    "Only the last message of a branch can be continued; this answer was "
                    "followed by another message."
                )
            stopped = continuation.lock_stopped(conn, message_id)
            assert stopped is not None
            if stopped.status not in continuation.STOPPED:
                raise StreamActive()  # continued meanwhile
            if stopped.step + 1 >= rt.settings.max_steps:
                raise ValidationError(
                    f"This answer already made {stopped.step + 1} model calls, the most an "
                    f"answer may make (CHATSVC_MAX_STEPS={rt.settings.max_steps})."
                )
            try:
                with conn.transaction():
                    claimed = continuation.reopen(
                        conn,
                        stopped,
                        owner=rt.owner,
                        lease_s=rt.settings.lease_s,
                        model=model,
                    )
            except psycopg.errors.UniqueViolation as exc:
                if unique_violation_of(exc, "messages_one_streaming_per_conversation"):
                    raise StreamActive() from exc
                raise
            assert claimed is not None
            claim = Claim(**claimed)
            outbox: list[events.Event] = []
            if leaf != message_id:
                tree.show(conn, conversation.id, message_id)
                outbox.append(events.BranchChanged(conversation.id, message_id))
            outbox.append(
                events.StatusChanged(conversation.id, message_id, "streaming", claim.epoch, True)
            )
            outbox += _stream_started(conversation, user, message_id)
            events.send(conn, outbox)
            continued = message_rows.get_any(conn, message_id)
            assert continued is not None
    rt.answerer.start(claim.stream(rt.settings.model), resumed=True)
    return continued


def switch_branch(rt: Runtime, user: User, conversation_id: UUID, message_id: UUID) -> None:
    """Show the branch through a message, down to the newest leaf below it."""
    with wrap_exceptions(), rt.pool.connection() as conn:
        conversations.get_visible(conn, user.id, conversation_id)
        message = message_rows.get_visible(conn, user.id, message_id)
        if message.conversation_id != conversation_id:
            raise ValidationError("That message belongs to another conversation.")
        with conn.transaction():
            leaf = tree.lock(conn, conversation_id)
            if message_rows.active_in(conn, conversation_id) is not None:
                raise StreamActive()
            newest = tree.newest_leaf_below(conn, message_id)
            if newest != leaf:
                tree.show(conn, conversation_id, newest)
                events.send(conn, [events.BranchChanged(conversation_id, newest)])


def _version_of(
    conn: Connection[Any], user: User, message_id: UUID, role: str, why: str
) -> tuple[Message, Conversation]:
    """A message the user may see, which must have `role`, and its conversation."""
    message = message_rows.get_visible(conn, user.id, message_id)
    if message.role != role:
        raise ValidationError(why)
    return message, conversations.get_visible(conn, user.id, message.conversation_id)


def _branch_off(  # noqa: PLR0917 - the parts of a new version, in the order they nest
    rt: Runtime,
    conn: Connection[Any],
    conversation: Conversation,
    user: User,
    parent_id: UUID | None,
    content: str | None,
    client_message_id: str | None,
    model: str,
) -> Sent:
    """A new version after `parent_id` (a question and its answer, or an answer alone when
    `content` is None), holding the conversation row; its branch becomes current."""
    tree.lock(conn, conversation.id)
    return _exchange(
        rt,
        conn,
        conversation,
        user,
        parent_id,
        content=content,
        client_message_id=client_message_id,
        model=model,
        moved=True,
    )


def _accepting(rt: Runtime) -> None:
    if rt.hub.closing:
        raise Unavailable("This server is shutting down; retry on another.")


def _earlier(
    conn: Connection[Any], conversation_id: UUID, client_message_id: str | None
) -> Sent | None:
    """What an earlier request with this client_message_id made, if any."""
    if client_message_id is None:
        return None
    earlier = message_rows.exchange_by_client_id(conn, conversation_id, client_message_id)
    return None if earlier is None else Sent(earlier, created=False)


def _within_budget(rt: Runtime, conn: Connection[Any], user: User) -> None:
    """The user's token limit, then their streaming answers (a per-user lock held until
    commit, taken before the conversation's lock in every command)."""
    if users.usage(conn, user.id).exhausted:
        raise TokenLimitExceeded()
    limits.admit_stream(conn, rt.settings, user.id)


def _exchange(
    rt: Runtime,
    conn: Connection[Any],
    conversation: Conversation,
    user: User,
    parent_id: UUID | None,
    *,
    content: str | None,
    client_message_id: str | None,
    model: str | None,
    moved: bool,
) -> Sent:
    """Insert a question (unless `content` is None) and its streaming answer after
    `parent_id`, make the answer's branch current, and announce it; the caller holds the
    conversation row. `moved`: the current branch changes other than by growing."""
    new_answer = NewAnswer(user.id, model or rt.settings.model, rt.owner, rt.settings.lease_s)
    inserted = message_rows.insert_exchange(
        conn,
        conversation.id,
        parent_id,
        content=content,
        client_message_id=client_message_id,
        answer=new_answer,
    )
    if inserted is None:  # a concurrent request with the same client_message_id won
        earlier = _earlier(conn, conversation.id, client_message_id)
        assert earlier is not None
        return earlier
    question_id, answer_id = inserted
    outbox: list[events.Event] = []
    if content is not None:
        outbox.append(events.MessageCreated(conversation.id, question_id))
    outbox.append(events.MessageCreated(conversation.id, answer_id))
    if moved:
        outbox.append(events.BranchChanged(conversation.id, answer_id))
    if content is not None:
        outbox += _titled(conn, conversation, content)
    outbox += _stream_started(conversation, user, answer_id)
    tree.show(conn, conversation.id, answer_id)
    events.send(conn, outbox)
    # The prompt is read here rather than by the answer (no round trip before its model
    # call), and both reads know that the new rows have nothing checkpointed yet.
    branch = history.said_before_new(conn, question_id, answer_id)
    exchange = Exchange(*message_rows.read_new(conn, [question_id, answer_id]))
    return Sent(exchange, created=True, branch=branch)


def _stream_started(conversation: Conversation, user: User, message_id: UUID) -> list[events.Event]:
    return [
        events.room_event(
            conversation.project_id,
            conversation.user_id,
            "stream.started",
            conversation_id=conversation.id,
            message_id=message_id,
            user_id=user.id,
        )
    ]


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


def _started(rt: Runtime, sent: Sent) -> Sent:
    """Generate a newly created answer (after its rows are committed)."""
    if sent.created:
        answer = sent.exchange.assistant_message
        rt.answerer.start(Stream.for_message(answer, rt.settings.model), branch=sent.branch)
    return sent


def cancel_conversation(rt: Runtime, user: User, conversation_id: UUID) -> Message:
    """Cancel the active answer; with none, the latest answer as it is (idempotent)."""
    with wrap_exceptions(), rt.pool.connection() as conn:
        conversations.get_visible(conn, user.id, conversation_id)
        active = message_rows.active_in(conn, conversation_id)
        if active is not None:
            return message_rows.request_cancel(conn, active.id) or active
        answers = [
            m for m in message_rows.current_branch(conn, conversation_id) if m.role == "assistant"
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
