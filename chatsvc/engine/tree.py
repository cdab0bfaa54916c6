"""A conversation as a tree: the branch it shows, and moving that branch (rows only).

Every message has a parent (none for a first message); a conversation shows the
branch that ends at its `current_leaf_id`. Whatever changes the tree or the
current branch first takes the conversation row (`lock`), so the sends, edits,
regenerations, continuations and branch switches of one conversation happen one
at a time, and each reads the branch it extends as it is.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg import Connection

from chatsvc.engine.statements import Statement, first_value, nothing

LOCK = "SELECT current_leaf_id FROM conversations WHERE id = %s FOR NO KEY UPDATE"


def lock_statement(conversation_id: UUID) -> Statement[UUID | None]:
    """Hold the conversation row until the transaction ends; the leaf of its current branch."""
    return Statement(LOCK, (conversation_id,), first_value)


def lock(conn: Connection[Any], conversation_id: UUID) -> UUID | None:
    """Hold the conversation row until the transaction ends; the leaf of its current branch."""
    return lock_statement(conversation_id).run(conn)


SET_LEAF = "UPDATE conversations SET current_leaf_id = %s WHERE id = %s"


def show_statement(conversation_id: UUID, leaf_id: UUID) -> Statement[None]:
    """Make the branch ending at `leaf_id` the one the conversation shows."""
    return Statement(SET_LEAF, (leaf_id, conversation_id), nothing)


def show(conn: Connection[Any], conversation_id: UUID, leaf_id: UUID) -> None:
    """Make the branch ending at `leaf_id` the one the conversation shows."""
    show_statement(conversation_id, leaf_id).run(conn)


# Children are always newer than their parent, so the newest message below one
# is a leaf: the end of the most recently extended branch through it.
NEWEST_LEAF_BELOW = """
WITH RECURSIVE down(id, seq) AS (
    SELECT m.id, m.seq FROM messages m WHERE m.id = %s
    UNION ALL
    SELECT c.id, c.seq FROM messages c JOIN down d ON c.parent_id = d.id
)
SELECT id FROM down ORDER BY seq DESC LIMIT 1
"""


def newest_leaf_below(conn: Connection[Any], message_id: UUID) -> UUID:
    """The leaf that ends the newest branch through a message (itself when it is a leaf)."""
    row = conn.execute(NEWEST_LEAF_BELOW, (message_id,)).fetchone()
    assert row is not None, "the caller checked the message exists"
    return UUID(str(row[0]))


HAS_CHILDREN = "SELECT EXISTS (SELECT 1 FROM messages WHERE parent_id = %s)"


def is_leaf(conn: Connection[Any], message_id: UUID) -> bool:
    """Whether no message follows this one."""
    row = conn.execute(HAS_CHILDREN, (message_id,)).fetchone()
    return not (row and row[0])
