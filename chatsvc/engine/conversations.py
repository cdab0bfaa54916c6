"""Conversations and who may see them (rows only; the caller owns the transaction)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import Connection
from psycopg.rows import class_row

from chatsvc.engine.statements import Statement, first_value, row_of
from chatsvc.errors import NotFound

# A private conversation is visible to its creator; a project's to every member.
VISIBLE_TO = """(c.user_id = %(user)s OR c.project_id IN
    (SELECT pm.project_id FROM project_members pm WHERE pm.user_id = %(user)s))"""


@dataclass(frozen=True)
class Conversation:
    """A conversation with whether an answer is streaming in it right now."""

    id: UUID
    user_id: UUID
    project_id: UUID | None
    title: str
    created_at: datetime
    active_message_id: UUID | None

    @property
    def is_streaming(self) -> bool:
        """Whether an answer is being written."""
        return self.active_message_id is not None


_COLUMNS = """c.id, c.user_id, c.project_id, c.title, c.created_at,
    (SELECT s.id FROM messages s WHERE s.conversation_id = c.id AND s.status = 'streaming')
        AS active_message_id"""

INSERT_CONVERSATION = f"""
INSERT INTO conversations AS c (user_id, project_id, title) VALUES (%s, %s, %s)
RETURNING {_COLUMNS}
"""


def create(
    conn: Connection[Any], user_id: UUID, project_id: UUID | None, title: str
) -> Conversation:
    """Insert a conversation (the caller has checked project membership)."""
    cur = conn.cursor(row_factory=class_row(Conversation))
    row = cur.execute(INSERT_CONVERSATION, (user_id, project_id, title)).fetchone()
    assert row is not None
    return row


SELECT_CONVERSATION = f"SELECT {_COLUMNS} FROM conversations c WHERE c.id = %(id)s AND {VISIBLE_TO}"


def visible_statement(user_id: UUID, conversation_id: UUID) -> Statement[Conversation | None]:
    """A conversation the user may see (None if none)."""
    params = {"id": conversation_id, "user": user_id}
    return Statement(SELECT_CONVERSATION, params, row_of(Conversation))


def get(conn: Connection[Any], user_id: UUID, conversation_id: UUID) -> Conversation | None:
    """A conversation the user may see."""
    return visible_statement(user_id, conversation_id).run(conn)


def get_visible(conn: Connection[Any], user_id: UUID, conversation_id: UUID) -> Conversation:
    """A conversation the user may see, or NotFound."""
    return found(get(conn, user_id, conversation_id))


def found(conversation: Conversation | None) -> Conversation:
    """The conversation a lookup found, or NotFound."""
    if conversation is None:
        raise NotFound("No such conversation.")
    return conversation


SELECT_PAGE = f"""
SELECT {_COLUMNS} FROM conversations c
WHERE {VISIBLE_TO}
  AND (%(project)s::uuid IS NULL OR c.project_id = %(project)s)
  AND (%(before)s::uuid IS NULL OR (c.created_at, c.id) <
       (SELECT b.created_at, b.id FROM conversations b WHERE b.id = %(before)s))
ORDER BY c.created_at DESC, c.id DESC
LIMIT %(limit)s
"""


def page(
    conn: Connection[Any],
    user_id: UUID,
    *,
    project_id: UUID | None,
    before: UUID | None,
    limit: int,
) -> list[Conversation]:
    """Visible conversations, newest first, strictly older than `before` when given."""
    cur = conn.cursor(row_factory=class_row(Conversation))
    params = {"user": user_id, "project": project_id, "before": before, "limit": limit}
    return cur.execute(SELECT_PAGE, params).fetchall()


DELETE_CONVERSATION = "DELETE FROM conversations WHERE id = %s RETURNING project_id"


def delete(conn: Connection[Any], conversation_id: UUID) -> bool:
    """Delete a conversation and, by cascade, its messages."""
    return conn.execute(DELETE_CONVERSATION, (conversation_id,)).fetchone() is not None


UPDATE_TITLE = f"""
UPDATE conversations AS c SET title = %(title)s WHERE c.id = %(id)s
RETURNING {_COLUMNS}
"""


def rename(conn: Connection[Any], conversation_id: UUID, title: str) -> Conversation:
    """Set a conversation's title (the caller has checked it may)."""
    cur = conn.cursor(row_factory=class_row(Conversation))
    row = cur.execute(UPDATE_TITLE, {"id": conversation_id, "title": title}).fetchone()
    if row is None:
        raise NotFound("No such conversation.")
    return row


# Only while untitled: of two first sends racing, one names the conversation.
NAME_UNTITLED = "UPDATE conversations SET title = %s WHERE id = %s AND title = '' RETURNING title"

TITLE_CHARS = 60


def title_from(content: str) -> str:
    """A title from a first message: its words on one line, cut at a word within TITLE_CHARS."""
    words = " ".join(content.split()).lstrip("#>*-+` ").strip()
    if len(words) <= TITLE_CHARS:
        return words
    cut = words[: TITLE_CHARS - 1]
    if " " in cut[TITLE_CHARS // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,.;:") + "…"


def name_untitled_statement(conversation_id: UUID, title: str) -> Statement[str | None]:
    """Title an untitled conversation (with `title_from` its first message); the new title,
    or None."""
    return Statement(NAME_UNTITLED, (title, conversation_id), first_value)
