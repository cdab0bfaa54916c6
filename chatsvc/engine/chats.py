"""Chat ids of the AI SDK transport: a conversation's UUID, or a key of the caller's.

A client of `POST /api/chat` names its chat with an id of its own choosing. An
id that is the UUID of a conversation the caller can see is that conversation;
any other id is a key in `chat_keys`, private to the caller, naming the
conversation its first POST created. A message the client names (`messageId`)
is a stored message's id or the client's own id of it, its `client_message_id`
(the caller owns the transaction).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg import Connection
from psycopg.rows import class_row

from chatsvc.engine import commands, conversations
from chatsvc.engine import messages as message_rows
from chatsvc.engine.conversations import Conversation
from chatsvc.engine.messages import Message
from chatsvc.engine.users import User
from chatsvc.errors import NotFound, ValidationError

SELECT_BY_KEY = "SELECT conversation_id FROM chat_keys WHERE user_id = %s AND key = %s"

# The key's row and its conversation are inserted in one transaction; of two
# first POSTs with one key, the one that loses the primary key keeps nothing.
INSERT_KEY = """
INSERT INTO chat_keys (user_id, key, conversation_id) VALUES (%s, %s, %s)
ON CONFLICT (user_id, key) DO NOTHING
RETURNING conversation_id
"""

# A title from the first message: its first line, cut to this many code points.
TITLE_CHARS = 80


class _KeyTaken(Exception):
    """A concurrent first POST created the key's conversation first."""


def _as_uuid(chat_id: str) -> UUID | None:
    try:
        return UUID(chat_id)
    except ValueError:
        return None


def find(conn: Connection[Any], user: User, chat_id: str) -> Conversation | None:
    """The conversation a chat id names for this user, if there is one."""
    uuid = _as_uuid(chat_id)
    if uuid is not None:
        found = conversations.get(conn, user.id, uuid)
        if found is not None:
            return found
    row = conn.execute(SELECT_BY_KEY, (user.id, chat_id)).fetchone()
    return None if row is None else conversations.get(conn, user.id, row[0])


def find_or_create(
    conn: Connection[Any], user: User, chat_id: str, first_message: str
) -> tuple[Conversation, bool]:
    """The conversation a chat id names, and whether it was created now (for a new key)."""
    found = find(conn, user, chat_id)
    if found is not None:
        return found, False
    title = first_message.strip().split("\n", 1)[0][:TITLE_CHARS]
    try:
        with conn.transaction():
            created = commands.create_conversation(conn, user, None, title)
            if conn.execute(INSERT_KEY, (user.id, chat_id, created.id)).fetchone() is None:
                raise _KeyTaken()
    except _KeyTaken:
        found = find(conn, user, chat_id)
        assert found is not None, "the key's row is committed by the POST that won"
        return found, False
    return created, True


def existing(conn: Connection[Any], user: User, chat_id: str) -> Conversation:
    """The conversation a chat id names, or NotFound (an edit or a regeneration needs one)."""
    found = find(conn, user, chat_id)
    if found is None:
        raise NotFound("No chat of yours has this id.")
    return found


SELECT_BY_CLIENT_ID = f"""
SELECT {message_rows.COLUMNS} FROM messages m
WHERE m.conversation_id = %s AND m.client_message_id = %s
"""


def named(conn: Connection[Any], user: User, conversation_id: UUID, message_id: str) -> Message:
    """The message of the chat a client names by its stored id or its client id; NotFound."""
    uuid = _as_uuid(message_id)
    if uuid is not None:
        found = message_rows.get(conn, user.id, uuid)
        if found is not None and found.conversation_id == conversation_id:
            return found
    cur = conn.cursor(row_factory=class_row(Message))
    by_client_id = cur.execute(SELECT_BY_CLIENT_ID, (conversation_id, message_id)).fetchone()
    if by_client_id is None:
        raise NotFound("No message of this chat has this id.")
    return by_client_id


def to_regenerate(
    conn: Connection[Any], user: User, conversation_id: UUID, message_id: str | None
) -> UUID:
    """The answer a regeneration is for: the one named, the answer on the current branch to
    the question named, or without a name the current branch's last answer."""
    branch = message_rows.current_branch(conn, conversation_id)
    if message_id is None:
        answers = [m for m in branch if m.role == "assistant"]
        if not answers:
            raise NotFound("This chat has no answer to regenerate.")
        return answers[-1].id
    message = named(conn, user, conversation_id, message_id)
    if message.role == "assistant":
        return message.id
    following = [m for m in branch if m.parent_id == message.id]
    if not following:
        raise ValidationError("This message has no answer on the chat's branch to regenerate.")
    return following[0].id
