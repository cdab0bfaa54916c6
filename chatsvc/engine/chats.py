"""Chat ids of the AI SDK transport: a conversation's UUID, or a key of the caller's.

A client of `POST /api/chat` names its chat with an id of its own choosing. An
id that is the UUID of a conversation the caller can see is that conversation;
any other id is a key in `chat_keys`, private to the caller, naming the
conversation its first POST created (the caller owns the transaction).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg import Connection

from chatsvc.engine import commands, conversations
from chatsvc.engine.conversations import Conversation
from chatsvc.engine.users import User

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
