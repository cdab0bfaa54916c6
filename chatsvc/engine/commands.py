"""The commands that change data and tell the other processes: HTTP and WebSocket share them.

Each writes its rows and queues its NOTIFY events in one transaction, so a change
and its announcement are committed together.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import Connection

from chatsvc import metrics
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
from chatsvc.engine.messages import Exchange, Message, NewAnswer, NewExchange
from chatsvc.engine.projects import Project
from chatsvc.engine.runtime import Runtime
from chatsvc.engine.statements import Statement, together
from chatsvc.engine.stream import Stream
from chatsvc.engine.users import User
from chatsvc.errors import (
    NotFound,
    StreamActive,
    TokenLimitExceeded,
    Unavailable,
    ValidationError,
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
    asked_at = time.monotonic()
    _accepting(rt)
    model = models.choose(rt.settings, model)
    with wrap_exceptions(), rt.pool.connection() as conn:
        sent = _add_exchange(
            rt,
            conn,
            user,
            conversation_id,
            content=content,
            client_message_id=client_message_id,
            model=model,
        )
    return _started(rt, sent, asked_at)


def regenerate(rt: Runtime, user: User, message_id: UUID, *, model: str | None = None) -> Sent:
    """A new answer beside an answer (same question), on a branch that becomes current."""
    asked_at = time.monotonic()
    _accepting(rt)
    with wrap_exceptions(), rt.pool.connection() as conn:
        answer = _version_of(
            conn,
            user,
            message_id,
            "assistant",
            "Only an answer can be regenerated; a question is edited.",
        )
        if answer.parent_id is None:
            raise ValidationError("Only an answer can be regenerated; a question is edited.")
        model = models.choose(rt.settings, model or answer.model)
        sent = _add_exchange(
            rt,
            conn,
            user,
            answer.conversation_id,
            content=None,
            client_message_id=None,
            model=model,
            branching=True,
            after=answer.parent_id,
        )
    return _started(rt, sent, asked_at)


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
    asked_at = time.monotonic()
    _accepting(rt)
    model = models.choose(rt.settings, model)
    with wrap_exceptions(), rt.pool.connection() as conn:
        question = _version_of(
            conn,
            user,
            message_id,
            "user",
            "Only a user message can be edited; an answer is regenerated.",
        )
        sent = _add_exchange(
            rt,
            conn,
            user,
            question.conversation_id,
            content=content,
            client_message_id=client_message_id,
            model=model,
            branching=True,
            after=question.parent_id,
        )
    return _started(rt, sent, asked_at)


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
            with message_rows.one_streaming():
                claimed = continuation.reopen(
                    conn,
                    stopped,
                    owner=rt.owner,
                    lease_s=rt.settings.lease_s,
                    model=model,
                )
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
) -> Message:
    """A message the user may see (and so its conversation), which must have `role`."""
    message = message_rows.get_visible(conn, user.id, message_id)
    if message.role != role:
        raise ValidationError(why)
    return message


def _accepting(rt: Runtime) -> None:
    if rt.hub.closing:
        raise Unavailable("This server is shutting down; retry on another.")
    if rt.pressure.overloaded:
        metrics.BUSY_REFUSALS.inc()
        raise Unavailable("This server is too busy to start another answer; try again shortly.")


def _within_budget(rt: Runtime, conn: Connection[Any], user: User) -> None:
    """The user's token limit, then their streaming answers (a per-user lock held until
    commit, taken before the conversation's lock in every command)."""
    if users.usage(conn, user.id).exhausted:
        raise TokenLimitExceeded()
    limits.admit_stream(conn, rt.settings, user.id)


@dataclass(frozen=True)
class _Admitted:
    """A conversation a new exchange may go in, held (its row and its user's lock)."""

    conversation: Conversation
    leaf: UUID | None  # the last message of its current branch
    earlier: Exchange | None  # what an earlier request with the same client_message_id made


def _admit(
    rt: Runtime,
    conn: Connection[Any],
    user: User,
    conversation_id: UUID,
    client_message_id: str | None,
) -> _Admitted:
    """Lock and check before a new exchange, in one round trip.

    The user's lock and then the conversation's row are taken in that order in every
    command; the statements after them read under both, so the conversation's title,
    the user's streaming answers and an earlier request's exchange are as they are.
    The checks answer in the order a client expects: a conversation it cannot see, a
    retried request, then its limits. (A conversation the user cannot see is held only
    until the error rolls the transaction back.)
    """
    lock_user, count = limits.count_statements(user.id)
    statements: list[Statement[Any]] = [
        lock_user,
        count,
        tree.lock_statement(conversation_id),
        conversations.visible_statement(user.id, conversation_id),
        users.usage_statement(user.id),
    ]
    if client_message_id is not None:
        statements.append(
            message_rows.earlier_exchange_statement(conversation_id, client_message_id)
        )
    _, active, leaf, conversation, usage, *earlier = together(conn, *statements)
    admitted = _Admitted(conversations.found(conversation), leaf, earlier[0] if earlier else None)
    if admitted.earlier is None:
        if usage.exhausted:
            raise TokenLimitExceeded()
        limits.check(rt.settings, active)
    return admitted


def _add_exchange(
    rt: Runtime,
    conn: Connection[Any],
    user: User,
    conversation_id: UUID,
    *,
    content: str | None,
    client_message_id: str | None,
    model: str,
    branching: bool = False,
    after: UUID | None = None,
) -> Sent:
    """A question (unless `content` is None) and its streaming answer: after the current
    branch's last message (a send), or, `branching`, after `after` on a new branch that
    becomes current (an edit, a regeneration); or what an earlier request with the same
    client_message_id made."""
    admitted = _admit(rt, conn, user, conversation_id, client_message_id)
    if admitted.earlier is not None:
        return Sent(admitted.earlier, created=False)
    return _exchange(
        rt,
        conn,
        admitted.conversation,
        user,
        after if branching else admitted.leaf,
        content=content,
        client_message_id=client_message_id,
        model=model,
        moved=branching,
    )


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
    `parent_id`, make the answer's branch current, announce it, and read the prompt, in
    one round trip; the caller holds the conversation row. `moved`: the current branch
    changes other than by growing."""
    if conn.autocommit:
        raise RuntimeError("an exchange is one transaction, undone whole if its key was taken")
    answer = NewAnswer(user.id, model or rt.settings.model, rt.owner, rt.settings.lease_s)
    new = NewExchange.after(
        conversation.id,
        parent_id,
        content=content,
        client_message_id=client_message_id,
        answer=answer,
    )
    outbox: list[events.Event] = []
    if content is not None:
        outbox.append(events.MessageCreated(conversation.id, new.question_id))
    outbox.append(events.MessageCreated(conversation.id, new.answer_id))
    if moved:
        outbox.append(events.BranchChanged(conversation.id, new.answer_id))
    naming: list[Statement[str | None]] = []
    title = _title(conversation, content)
    if title:
        naming.append(conversations.name_untitled_statement(conversation.id, title))
        outbox.append(_updated(conversation, title))
    outbox += _stream_started(conversation, user, new.answer_id)
    # The prompt is read here rather than by the answer (no round trip before its model
    # call), and both reads know that the new rows have nothing checkpointed yet.
    with message_rows.one_streaming():
        inserted, *_, branch, rows = together(
            conn,
            message_rows.exchange_statement(new),
            *naming,
            tree.show_statement(conversation.id, new.answer_id),
            *events.notify_statements(outbox),
            history.said_before_new_statement(new.question_id, new.answer_id),
            message_rows.new_messages_statement([new.question_id, new.answer_id]),
        )
    if not inserted:
        # A concurrent request with the same client_message_id won: what followed the
        # insert named rows that do not exist, and is undone.
        conn.rollback()
        assert client_message_id is not None
        earlier = message_rows.earlier_exchange_statement(conversation.id, client_message_id)
        exchange = earlier.run(conn)
        assert exchange is not None
        return Sent(exchange, created=False)
    return Sent(Exchange(*rows), created=True, branch=branch)


def _title(conversation: Conversation, content: str | None) -> str:
    """The title a conversation takes from its first message (never from reasoning): it is
    read under the conversation's lock, so an untitled one is named by this exchange."""
    if conversation.title or content is None:
        return ""
    return conversations.title_from(content)


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


def _updated(conversation: Conversation, title: str) -> events.Event:
    return events.room_event(
        conversation.project_id,
        conversation.user_id,
        "conversation.updated",
        conversation_id=conversation.id,
        title=title,
    )


def _started(rt: Runtime, sent: Sent, asked_at: float) -> Sent:
    """Generate a newly created answer (after its rows are committed); `asked_at`: when the
    request began, for the time to its first text."""
    if sent.created:
        stream = Stream.for_message(sent.exchange.assistant_message, rt.settings.model)
        rt.answerer.start(stream, branch=sent.branch, sent_at=asked_at)
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
