"""Message rows: sending, reading the true state, cancelling (the caller owns the transaction)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import Connection
from psycopg.rows import class_row

from chatsvc.engine.conversations import VISIBLE_TO
from chatsvc.errors import StreamActive, unique_violation_of

TERMINAL = ("completed", "cancelled", "failed", "interrupted")


@dataclass(frozen=True)
class Message:
    """A message as the database has it; a streaming answer carries its checkpointed text."""

    id: UUID
    conversation_id: UUID
    role: str
    status: str
    content: str
    content_length: int
    epoch: int
    model: str | None
    usage: dict[str, Any] | None
    error: str | None
    created_at: datetime
    completed_at: datetime | None
    client_message_id: str | None
    reply_to: UUID | None
    user_id: UUID | None

    @property
    def is_streaming(self) -> bool:
        """Whether the answer is still being written."""
        return self.status == "streaming"

    def to_json(self) -> dict[str, Any]:
        """The API representation (SPEC section 2)."""
        return {
            "id": self.id,
            "conversation_id": self.conversation_id,
            "role": self.role,
            "status": self.status,
            "content": self.content,
            "content_length": self.content_length,
            "epoch": self.epoch,
            "model": self.model,
            "usage": self.usage,
            "error": self.error,
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "client_message_id": self.client_message_id,
            "reply_to": self.reply_to,
            "user_id": self.user_id,
        }


@dataclass(frozen=True)
class Exchange:
    """A user message and the answer it asked for."""

    user_message: Message
    assistant_message: Message


@dataclass(frozen=True)
class TextFrom:
    """A message's committed text after an offset, with the state it was read in."""

    message_id: UUID
    conversation_id: UUID
    status: str
    epoch: int
    content_length: int
    text: str
    usage: dict[str, Any] | None
    error: str | None

    @property
    def is_terminal(self) -> bool:
        """Whether the message has ended."""
        return self.status != "streaming"


COLUMNS = """m.id, m.conversation_id, m.role, m.status, message_text(m) AS content,
    m.content_length, m.epoch, m.model, m.usage, m.error, m.created_at, m.completed_at,
    m.client_message_id, m.reply_to, m.user_id"""

INSERT_USER_MESSAGE = f"""
INSERT INTO messages AS m (conversation_id, user_id, role, status, content, content_length,
                           client_message_id, completed_at)
VALUES (%s, %s, 'user', 'completed', %s, %s, %s, clock_timestamp())
RETURNING {COLUMNS}
"""

INSERT_ANSWER = f"""
INSERT INTO messages AS m (conversation_id, user_id, role, status, reply_to, model, epoch, owner,
                           lease_expires_at, last_checkpoint_at)
VALUES (%s, %s, 'assistant', 'streaming', %s, %s, 1, %s, now() + %s * interval '1 second', now())
RETURNING {COLUMNS}
"""


def create_exchange(
    conn: Connection[Any],
    *,
    conversation_id: UUID,
    user_id: UUID,
    content: str,
    model: str,
    client_message_id: str | None,
    owner: str,
    lease_s: float,
) -> Exchange | None:
    """Insert the user message and its streaming answer, owned by `owner`.

    Returns None when `client_message_id` was already used in this conversation;
    raises StreamActive when another answer is streaming. Both are decided by the
    database's unique indexes, so concurrent sends cannot both win.
    """
    cur = conn.cursor(row_factory=class_row(Message))
    try:
        with conn.transaction():
            user_message = cur.execute(
                INSERT_USER_MESSAGE,
                (conversation_id, user_id, content, len(content), client_message_id),
            ).fetchone()
            assert user_message is not None
            answer = cur.execute(
                INSERT_ANSWER,
                (conversation_id, user_id, user_message.id, model, owner, lease_s),
            ).fetchone()
            assert answer is not None
    except psycopg.errors.UniqueViolation as exc:
        if unique_violation_of(exc, "messages_client_message_id"):
            return None
        if unique_violation_of(exc, "messages_one_streaming_per_conversation"):
            raise StreamActive() from exc
        raise
    return Exchange(user_message, answer)


SELECT_EXCHANGE_BY_CLIENT_ID = f"""
SELECT {COLUMNS} FROM messages m
WHERE m.conversation_id = %(conversation)s AND
      (m.client_message_id = %(client)s OR m.reply_to = (
          SELECT u.id FROM messages u
          WHERE u.conversation_id = %(conversation)s AND u.client_message_id = %(client)s))
ORDER BY m.seq
"""


def exchange_by_client_id(
    conn: Connection[Any], conversation_id: UUID, client_message_id: str
) -> Exchange | None:
    """The pair an earlier send with this client_message_id created."""
    cur = conn.cursor(row_factory=class_row(Message))
    params = {"conversation": conversation_id, "client": client_message_id}
    rows = cur.execute(SELECT_EXCHANGE_BY_CLIENT_ID, params).fetchall()
    if len(rows) != 2:
        return None
    return Exchange(rows[0], rows[1])


SELECT_MESSAGE = f"""
SELECT {COLUMNS} FROM messages m JOIN conversations c ON c.id = m.conversation_id
WHERE m.id = %(id)s AND {VISIBLE_TO}
"""


def get(conn: Connection[Any], user_id: UUID, message_id: UUID) -> Message | None:
    """A message in a conversation the user may see, with its true status and content."""
    cur = conn.cursor(row_factory=class_row(Message))
    return cur.execute(SELECT_MESSAGE, {"id": message_id, "user": user_id}).fetchone()


SELECT_MESSAGE_BY_ID = f"SELECT {COLUMNS} FROM messages m WHERE m.id = %s"


def get_any(conn: Connection[Any], message_id: UUID) -> Message | None:
    """A message by id, without a visibility check (for fan-out to already-authorised streams)."""
    cur = conn.cursor(row_factory=class_row(Message))
    return cur.execute(SELECT_MESSAGE_BY_ID, (message_id,)).fetchone()


SELECT_CONVERSATION_MESSAGES = f"""
SELECT {COLUMNS} FROM messages m WHERE m.conversation_id = %s ORDER BY m.seq
"""


def in_conversation(conn: Connection[Any], conversation_id: UUID) -> list[Message]:
    """Every message of a conversation in order."""
    cur = conn.cursor(row_factory=class_row(Message))
    return cur.execute(SELECT_CONVERSATION_MESSAGES, (conversation_id,)).fetchall()


# One snapshot gives the status, the length and the text together, so a reader
# never pairs text with a status from a different moment. While streaming, only
# the chunks that reach past the offset are read.
SELECT_TEXT_FROM = """
SELECT m.id AS message_id, m.conversation_id, m.status, m.epoch, m.content_length,
       CASE WHEN m.status = 'streaming' THEN coalesce((
           SELECT substr(string_agg(c.content, '' ORDER BY c.start_offset),
                         %(offset)s - min(c.start_offset) + 1)
           FROM message_chunks c
           WHERE c.message_id = m.id AND c.start_offset + char_length(c.content) > %(offset)s), '')
       ELSE substr(m.content, %(offset)s + 1) END AS text,
       m.usage, m.error
FROM messages m WHERE m.id = %(id)s
"""


def text_from(conn: Connection[Any], message_id: UUID, offset: int) -> TextFrom | None:
    """The committed text of a message after `offset` code points."""
    cur = conn.cursor(row_factory=class_row(TextFrom))
    return cur.execute(SELECT_TEXT_FROM, {"id": message_id, "offset": offset}).fetchone()


REQUEST_CANCEL = """
UPDATE messages m SET cancel_requested_at = coalesce(m.cancel_requested_at, now())
WHERE m.id = %s AND m.status = 'streaming'
RETURNING m.id
"""


def request_cancel(conn: Connection[Any], message_id: UUID) -> Message | None:
    """Record the durable intent to cancel a streaming answer (a trigger notifies its owner)."""
    if conn.execute(REQUEST_CANCEL, (message_id,)).fetchone() is None:
        return None
    # Read the row again in a new statement: when the UPDATE waited for a
    # checkpoint's lock it returns the new row version, but a text read inside it
    # would still see the chunks as of its own older snapshot.
    return get_any(conn, message_id)


SELECT_ACTIVE_IN_CONVERSATION = f"""
SELECT {COLUMNS} FROM messages m WHERE m.conversation_id = %s AND m.status = 'streaming'
"""


def active_in(conn: Connection[Any], conversation_id: UUID) -> Message | None:
    """The answer streaming in a conversation, if any."""
    cur = conn.cursor(row_factory=class_row(Message))
    return cur.execute(SELECT_ACTIVE_IN_CONVERSATION, (conversation_id,)).fetchone()
