"""Continuing an answer: reopening a stopped one, and the seam where new text meets old.

A stopped answer (cancelled, interrupted or failed, and last on its branch) is
the one terminal row that may change again: `reopen` makes it `streaming` under
a new epoch, with its text and reasoning back in chunks at offset 0, so new text
is appended at the old end of every part and a reader's offsets stay valid. Its
next model call is a new step (each model call is metered under its own step);
the part it was writing when it stopped is carried over to that step, so the
text goes on in the same part.

When a model asked to continue repeats the end of what was written (a taken-over
answer, or a continued one), `Seam` cuts the repetition from the new text.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import Connection
from psycopg.rows import class_row

from chatsvc.engine.parts import Entry

STOPPED = ("cancelled", "interrupted", "failed")


@dataclass(frozen=True)
class Stopped:
    """A stopped answer as its row holds it, locked until the transaction ends."""

    id: UUID
    conversation_id: UUID
    status: str
    epoch: int
    step: int
    layout: list[Entry] | None
    content_length: int


SELECT_STOPPED = """
SELECT id, conversation_id, status, epoch, step, layout, content_length
FROM messages WHERE id = %s AND role = 'assistant' FOR UPDATE
"""

# The text goes back to a chunk (reasoning too: the concatenation of the
# reasoning parts), written by the stopped epoch, so that a takeover's estimate
# of what the new epoch wrote (leases.TAKE_OVER) leaves it out. The view makes
# each chunk a batch of its own, after the answer's new batches_from.
REOPEN = """
WITH chunks AS (
    INSERT INTO message_chunks (message_id, kind, start_offset, epoch, content)
    SELECT m.id, 'text', 0, m.epoch, m.content FROM messages m
    WHERE m.id = %(id)s AND m.content <> ''
    UNION ALL
    SELECT m.id, 'reasoning', 0, m.epoch, r.text
    FROM messages m, LATERAL (
        SELECT string_agg(p ->> 'text', '' ORDER BY k) AS text
        FROM jsonb_array_elements(coalesce(m.parts, '[]')) WITH ORDINALITY AS e(p, k)
        WHERE p ->> 'type' = 'reasoning') r
    WHERE m.id = %(id)s AND coalesce(r.text, '') <> ''
)
UPDATE messages m
SET status = 'streaming', epoch = m.epoch + 1, owner = %(owner)s,
    lease_expires_at = now() + %(lease)s * interval '1 second', last_checkpoint_at = now(),
    completed_at = NULL, cancel_requested_at = NULL, error = NULL, usage = NULL,
    content = '', parts = NULL, resume_count = 0, step = %(step)s,
    layout = %(layout)s::jsonb, model = %(model)s, batches_from = chatsvc_batches_now()
WHERE m.id = %(id)s AND m.status = ANY(%(stopped)s)
RETURNING m.id, m.conversation_id, m.user_id, m.model, m.epoch, m.content_length,
          m.resume_count, m.reasoning_length, m.tool_version, m.step, m.layout
"""


def lock_stopped(conn: Connection[Any], message_id: UUID) -> Stopped | None:
    """The answer's row, locked (None for a message that is not an answer)."""
    cur = conn.cursor(row_factory=class_row(Stopped))
    return cur.execute(SELECT_STOPPED, (message_id,)).fetchone()


def carried_over(stopped: Stopped) -> list[Entry] | None:
    """The layout the continuation starts from: the part being written when the answer
    stopped (text or reasoning) belongs to the next step, so that step extends it."""
    if stopped.layout is None:
        # Text alone: one text part, which the next step goes on writing.
        if stopped.content_length == 0:
            return None
        return [{"type": "text", "step": stopped.step + 1, "start": 0}]
    entries = copy.deepcopy(stopped.layout)
    if entries and entries[-1]["type"] in ("text", "reasoning"):
        entries[-1]["step"] = stopped.step + 1
    return entries


def reopen(
    conn: Connection[Any], stopped: Stopped, *, owner: str, lease_s: float, model: str
) -> dict[str, Any] | None:
    """Make a stopped answer `streaming` again under a new epoch, owned by `owner`; the
    columns a takeover claims (leases.Claim), or None if it is no longer stopped.

    Raises psycopg's UniqueViolation when another answer of the conversation streams.
    """
    layout = carried_over(stopped)
    params = {
        "id": stopped.id,
        "owner": owner,
        "lease": lease_s,
        "step": stopped.step + 1,
        "layout": None if layout is None else json.dumps(layout, ensure_ascii=False),
        "model": model,
        "stopped": list(STOPPED),
    }
    cur = conn.execute(REOPEN, params)
    row = cur.fetchone()
    if row is None:
        return None
    names = [column.name for column in cur.description or ()]
    return dict(zip(names, row, strict=True))


# A model that repeats fewer code points than this is taken at its word: a short
# match is more often a coincidence ("the" after "…th") than a repetition.
MIN_REPEAT = 4
# How much of the old end a repetition is looked for in, and the most new text
# held back while deciding.
WINDOW = 200


class Seam:
    """Trims the start of a continuation that repeats the end of the text before it.

    New text is held back while it may still be the start of a repetition (it
    occurs in the last WINDOW code points of the old text); as soon as it cannot
    be, or WINDOW code points have come, or the model call's text ends, the
    longest prefix of it that the old text ends with (if at least MIN_REPEAT
    long) is dropped and the rest goes on. After that, text passes through.
    """

    def __init__(self, before: str) -> None:
        self.before = before[-WINDOW:]
        self.held = ""
        self.open = len(self.before) >= MIN_REPEAT

    def feed(self, text: str) -> str:
        """The text to write now for `text` that the model just produced."""
        if not self.open:
            return text
        self.held += text
        if len(self.held) < WINDOW and self.held in self.before:
            return ""
        return self.flush()

    def flush(self) -> str:
        """Decide now (the model call's text ended): the held text, its repetition cut."""
        if not self.open:
            return ""
        self.open = False
        held, self.held = self.held, ""
        return held[repeated(self.before, held) :]


def repeated(before: str, after: str) -> int:
    """How many code points at the start of `after` repeat the end of `before` (0 when
    fewer than MIN_REPEAT)."""
    for k in range(min(len(before), len(after)), MIN_REPEAT - 1, -1):
        if before.endswith(after[:k]):
            return k
    return 0
