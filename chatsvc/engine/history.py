"""What the model is told: the conversation before an answer, and the answer's parts so far.

Earlier answers give the model their text and their tool exchanges, never their
reasoning; the answer being written gives its committed parts, so a process
that takes it over asks the model with exactly what was stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import Connection, Cursor
from psycopg.rows import class_row

from chatsvc.engine.messages import PARTS_AS_COMMITTED
from chatsvc.engine.statements import Statement, rows_of


@dataclass(frozen=True)
class Said:
    """A message of the conversation as the model is told of it."""

    id: UUID
    role: str
    content: str
    parts: list[dict[str, Any]] | None
    steps: dict[str, int] | None  # the model call each tool call came from, by tool_call_id


# The answer's own branch up to and including it, whose parts are read as
# committed: never a message of another branch.
# A finished message's text and parts are its columns (only the answer being
# written is assembled), and only answers with tool parts read the ledger: a long
# branch stays cheap to turn into a prompt. Each message is looked up by its key
# (OFFSET 0 keeps the subquery apart): joined to the walk, whose length the planner
# guesses at a hundred, a table of some thousand messages gets hashed whole.
SELECT_SAID = f"""
SELECT x.* FROM message_branch(%(leaf)s) b
CROSS JOIN LATERAL (
    SELECT m.id, m.role,
           CASE WHEN m.status = 'streaming' THEN message_text(m) ELSE m.content END AS content,
           {PARTS_AS_COMMITTED} AS parts,
           CASE WHEN m.tool_version > 0 THEN
               (SELECT jsonb_object_agg(t.tool_call_id, t.step) FROM tool_calls t
                WHERE t.message_id = m.id) END AS steps
    FROM messages m WHERE m.id = b.id
    OFFSET 0
) x
ORDER BY b.depth DESC
"""


# The messages of an answer's branch before it, and the answer as committed.
Branch = tuple[list[Said], Said | None]

_said_rows = rows_of(Said)


def said_before_new_statement(question_id: UUID, answer_id: UUID) -> Statement[Branch]:
    """The branch of an answer this transaction just inserted after `question_id`: the
    question's branch (every message of it finished), and the answer with nothing
    committed (reading it would assemble its parts from the chunks, for nothing)."""

    def branch(cur: Cursor[Any]) -> Branch:
        return _said_rows(cur), Said(answer_id, "assistant", "", [], None)

    return Statement(SELECT_SAID, {"leaf": question_id}, branch)


def said_before(conn: Connection[Any], answer_id: UUID) -> Branch:
    """The messages of an answer's branch before it, and the answer as committed (None if
    it is gone)."""
    cur = conn.cursor(row_factory=class_row(Said))
    rows = cur.execute(SELECT_SAID, {"leaf": answer_id}).fetchall()
    if rows and rows[-1].id == answer_id:
        return rows[:-1], rows[-1]
    return rows, None


SELECT_USER_NAME = "SELECT name FROM users WHERE id = %s"


def user_name(conn: Connection[Any], user_id: UUID | None) -> str:
    """The name of the user an answer is for, as tools receive it."""
    row = conn.execute(SELECT_USER_NAME, (user_id,)).fetchone() if user_id else None
    return str(row[0]) if row else ""
