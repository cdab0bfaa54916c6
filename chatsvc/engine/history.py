"""What the model is told: the conversation before an answer, and the answer's parts so far.

Earlier answers give the model their text and their tool exchanges, never their
reasoning; the answer being written gives its committed parts, so a process
that takes it over asks the model with exactly what was stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import Connection
from psycopg.rows import class_row


@dataclass(frozen=True)
class Said:
    """A message of the conversation as the model is told of it."""

    id: UUID
    role: str
    content: str
    parts: list[dict[str, Any]] | None
    steps: dict[str, int] | None  # the model call each tool call came from, by tool_call_id


# Up to and including the answer itself, whose parts are read as committed.
SELECT_SAID = """
SELECT m.id, m.role, message_text(m) AS content, message_parts(m) AS parts,
       (SELECT jsonb_object_agg(t.tool_call_id, t.step) FROM tool_calls t
        WHERE t.message_id = m.id) AS steps
FROM messages m
WHERE m.conversation_id = %(conversation)s
  AND m.seq <= (SELECT a.seq FROM messages a WHERE a.id = %(answer)s)
ORDER BY m.seq
"""


def said_before(
    conn: Connection[Any], conversation_id: UUID, answer_id: UUID
) -> tuple[list[Said], Said | None]:
    """The messages before an answer, and the answer as committed (None if it is gone)."""
    cur = conn.cursor(row_factory=class_row(Said))
    rows = cur.execute(
        SELECT_SAID, {"conversation": conversation_id, "answer": answer_id}
    ).fetchall()
    if rows and rows[-1].id == answer_id:
        return rows[:-1], rows[-1]
    return rows, None


SELECT_USER_NAME = "SELECT name FROM users WHERE id = %s"


def user_name(conn: Connection[Any], user_id: UUID | None) -> str:
    """The name of the user an answer is for, as tools receive it."""
    row = conn.execute(SELECT_USER_NAME, (user_id,)).fetchone() if user_id else None
    return str(row[0]) if row else ""
