"""Message rows: sending, reading the true state, cancelling (the caller owns the transaction)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Annotated, Any, Literal, NotRequired
from uuid import UUID, uuid4

import psycopg
from psycopg import Connection, Cursor
from psycopg.rows import class_row
from pydantic import Field
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from chatsvc.engine.conversations import VISIBLE_TO
from chatsvc.engine.statements import Statement, rows_of
from chatsvc.errors import NotFound, StreamActive, unique_violation_of

STATUSES = ("streaming", "completed", "cancelled", "failed", "interrupted")
TOOL_STATES = ("input-streaming", "input-available", "output-available", "output-error")


def _doc(description: str, **schema: Any) -> Any:
    """Field metadata for the API description (the web layer derives its schema from Message)."""
    return Field(description=description, json_schema_extra=schema or None)


class ReasoningPart(TypedDict):
    """The model's reasoning: never part of `content`."""

    type: Literal["reasoning"]
    text: str


class TextPart(TypedDict):
    """Answer text; `content` is the concatenation of the text parts."""

    type: Literal["text"]
    text: str


class ToolPart(TypedDict):
    """A tool call and its current state."""

    type: Literal["tool"]
    tool_call_id: Annotated[str, _doc("The call's id, as the model named it.")]
    name: Annotated[str, _doc("The tool called.")]
    state: Annotated[
        str,
        _doc(
            "`input-streaming` (arguments still being written), `input-available` (it runs), "
            "`output-available` (`output` holds the result) or `output-error` (`error` says why).",
            enum=list(TOOL_STATES),
        ),
    ]
    input: NotRequired[
        Annotated[Any, _doc("The arguments: a JSON object, or the text written so far.")]
    ]
    output: NotRequired[Annotated[Any, _doc("The tool's result (JSON, or text).")]]
    error: NotRequired[Annotated[str, _doc("Why the call failed or has no known outcome.")]]


Part = Annotated[ReasoningPart | TextPart | ToolPart, Field(discriminator="type")]


@dataclass(frozen=True)
class Message:
    """A message as the database has it, with its true status and content."""

    # These fields are the message's wire format, for HTTP, SSE and WebSocket alike.
    id: UUID
    conversation_id: UUID
    role: Annotated[str, _doc("Who wrote it.", enum=["user", "assistant"])]
    status: Annotated[
        str,
        _doc(
            "`streaming` is the only non-terminal status; a terminal answer changes again only "
            "when a client continues it (its text then grows at its end).",
            enum=list(STATUSES),
        ),
    ]
    content: Annotated[
        str,
        _doc(
            "The whole text of a finished message; while streaming, the checkpointed text so far."
        ),
    ]
    content_length: Annotated[int, _doc("Length of `content` in Unicode code points.", minimum=0)]
    epoch: Annotated[
        int,
        _doc("Ownership generation; incremented at each takeover and continuation.", minimum=0),
    ]
    model: Annotated[str | None, _doc("An answer's LLM model; null for user messages.")]
    usage: Annotated[
        dict[str, Any] | None,
        _doc("Tokens an answer used: `prompt_tokens`, `completion_tokens` (and `estimated`)."),
    ]
    error: Annotated[str | None, _doc("Why an answer failed or was interrupted.")]
    created_at: datetime
    completed_at: Annotated[datetime | None, _doc("When the message reached a terminal status.")]
    client_message_id: Annotated[str | None, _doc("The sender's idempotency key.")]
    reply_to: Annotated[UUID | None, _doc("For an answer: the user message it answers.")]
    parent_id: Annotated[
        UUID | None, _doc("The message this one follows in the conversation's tree; null first.")
    ]
    sibling_ids: Annotated[
        list[UUID],
        _doc(
            "Its versions: this message and the others with the same parent, oldest first "
            "(an edited question, a regenerated answer)."
        ),
    ]
    user_id: Annotated[UUID | None, _doc("The user who sent it (or asked for the answer).")]
    reasoning_length: Annotated[
        int,
        _doc("Length of an answer's reasoning (its reasoning parts) in code points.", minimum=0),
    ]
    tool_version: Annotated[
        int, _doc("How many changes an answer's tool parts have had so far.", minimum=0)
    ]
    parts: Annotated[
        list[Part] | None,
        _doc("An answer's parts in the order the model produced them (so far); null for users."),
    ]

    @property
    def has_parts(self) -> bool:
        """Whether the answer has reasoning or tool parts (its stream ids are then composite)."""
        return self.reasoning_length > 0 or self.tool_version > 0

    @property
    def is_streaming(self) -> bool:
        """Whether the answer is still being written."""
        return self.status == "streaming"

    def to_json(self) -> dict[str, Any]:
        """The wire representation: every field, as declared above."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Exchange:
    """A user message and the answer it asked for."""

    user_message: Message
    assistant_message: Message


@dataclass(frozen=True)
class PartsFrom:
    """An answer after a position (text, reasoning, tool changes), read in one snapshot."""

    message_id: UUID
    conversation_id: UUID
    status: str
    epoch: int
    content_length: int
    reasoning_length: int
    tool_version: int
    layout: list[dict[str, Any]] | None
    text: str
    reasoning: str
    parts: list[dict[str, Any]] | None
    usage: dict[str, Any] | None
    error: str | None

    @property
    def is_terminal(self) -> bool:
        """Whether the message has ended."""
        return self.status != "streaming"

    @property
    def has_parts(self) -> bool:
        """Whether the answer has reasoning or tool parts (its stream ids are then composite)."""
        return self.layout is not None or self.reasoning_length > 0 or self.tool_version > 0


_COLUMNS = """m.id, m.conversation_id, m.role, m.status, {content} AS content,
    {content_length} AS content_length, m.epoch, m.model, m.usage, m.error,
    m.created_at, m.completed_at, m.client_message_id, m.reply_to, m.parent_id,
    m.user_id, {reasoning_length} AS reasoning_length, m.tool_version, {parts} AS parts"""
_SIBLINGS = ", message_sibling_ids(m) AS sibling_ids"
# A message's parts: NULL for a question; an answer that is text alone stores
# none (NULL), its parts being that text.
PARTS_AS_COMMITTED = """CASE WHEN m.status = 'streaming' THEN message_parts(m)
         WHEN m.role = 'assistant' THEN coalesce(m.parts, chatsvc_text_parts(m.content)) END"""
# A finished message's text and parts are its columns; only a streaming one's are
# assembled (message_text, message_parts), which keeps a long branch cheap to read.
_AS_COMMITTED = {
    "content": "CASE WHEN m.status = 'streaming' THEN message_text(m) ELSE m.content END",
    "content_length": "message_committed(m, 'text')",
    "reasoning_length": "message_committed(m, 'reasoning')",
    "parts": PARTS_AS_COMMITTED,
}
COLUMNS = _COLUMNS.format(**_AS_COMMITTED) + _SIBLINGS
# Messages the reader's own transaction just inserted: nothing can have been
# checkpointed for them, so their columns are the whole truth (and reading them
# assembles nothing).
_NEW_COLUMNS = (
    _COLUMNS.format(
        content="m.content",
        content_length="m.content_length",
        reasoning_length="m.reasoning_length",
        parts="CASE WHEN m.role = 'assistant' THEN '[]'::jsonb END",
    )
    + _SIBLINGS
)

# An answer's epoch when it is created; a higher one means it was taken over
# or continued since.
FIRST_EPOCH = 1

# The question (unless %(content)s is NULL: a regeneration answers %(parent)s) and
# its answer, in one statement, no savepoint: a reused client_message_id inserts
# nothing rather than failing. The question's row is produced before the answer's,
# so it takes the lower seq. A statement does not see its own rows, so the
# messages (their sibling_ids) are read by the next one.
INSERT_EXCHANGE = f"""
WITH question AS (
    INSERT INTO messages (id, conversation_id, user_id, parent_id, role, status, content,
                          content_length, client_message_id, completed_at)
    SELECT %(question)s, %(conversation)s, %(user)s, %(parent)s::uuid, 'user', 'completed',
           %(content)s::text, length(%(content)s::text), %(client)s::text, clock_timestamp()
    WHERE %(content)s::text IS NOT NULL
    ON CONFLICT (conversation_id, client_message_id) WHERE client_message_id IS NOT NULL
    DO NOTHING
    RETURNING id
), asked AS (
    SELECT id FROM question
    UNION ALL
    SELECT %(parent)s::uuid WHERE %(content)s::text IS NULL
)
INSERT INTO messages (id, conversation_id, user_id, parent_id, role, status, reply_to, model,
                      epoch, owner, lease_expires_at, last_checkpoint_at)
SELECT %(answer)s, %(conversation)s, %(user)s, asked.id, 'assistant', 'streaming', asked.id,
       %(model)s, {FIRST_EPOCH}, %(owner)s, now() + %(lease_s)s * interval '1 second', now()
FROM asked
RETURNING id
"""


@dataclass(frozen=True)
class NewAnswer:
    """What an answer about to be inserted needs: who asks, which model, who owns it."""

    user_id: UUID
    model: str
    owner: str
    lease_s: float


@dataclass(frozen=True)
class NewExchange:
    """A user message and its streaming answer about to be inserted after `parent_id`; with
    `content` None, an answer alone to the user message `parent_id` (a regeneration).

    Their ids are chosen here rather than by the database, so the statements that name
    them (the branch shown, the events) can go in the insert's round trip.
    """

    conversation_id: UUID
    parent_id: UUID | None
    content: str | None
    client_message_id: str | None
    answer: NewAnswer
    question_id: UUID
    answer_id: UUID

    @classmethod
    def after(
        cls,
        conversation_id: UUID,
        parent_id: UUID | None,
        *,
        content: str | None,
        client_message_id: str | None,
        answer: NewAnswer,
    ) -> NewExchange:
        """New ids for the question (unless it is `parent_id`) and the answer."""
        if content is None and parent_id is None:
            raise ValueError("an answer alone answers the user message it follows")
        question_id = uuid4() if content is not None else parent_id
        assert question_id is not None
        return cls(
            conversation_id,
            parent_id,
            content,
            client_message_id,
            answer,
            question_id,
            uuid4(),
        )


def exchange_statement(new: NewExchange) -> Statement[bool]:
    """Insert the exchange: True, or False when `client_message_id` was already used in
    this conversation (nothing is inserted).

    The database's unique indexes decide, so concurrent requests cannot both win:
    another answer streaming in the conversation fails it (see `one_streaming`). The
    caller holds the conversation row (tree.lock) and moves its current branch.
    """
    params = {
        "conversation": new.conversation_id,
        "user": new.answer.user_id,
        "parent": new.parent_id,
        "question": new.question_id,
        "answer": new.answer_id,
        "content": new.content,
        "client": new.client_message_id,
        "model": new.answer.model,
        "owner": new.answer.owner,
        "lease_s": new.answer.lease_s,
    }
    return Statement(INSERT_EXCHANGE, params, lambda cur: cur.fetchone() is not None)


@contextmanager
def one_streaming() -> Iterator[None]:
    """StreamActive when a statement inside would make a second answer stream in a
    conversation (the index decides, whatever the caller read before)."""
    try:
        yield
    except psycopg.errors.UniqueViolation as exc:
        if unique_violation_of(exc, "messages_one_streaming_per_conversation"):
            raise StreamActive() from exc
        raise


def insert_exchange(conn: Connection[Any], new: NewExchange) -> bool:
    """Insert the exchange alone (see `exchange_statement`)."""
    with one_streaming():
        return exchange_statement(new).run(conn)


SELECT_MESSAGES = f"SELECT {COLUMNS} FROM messages m WHERE m.id = ANY(%s)"


def read(conn: Connection[Any], ids: list[UUID]) -> list[Message]:
    """Messages by id, in the order of `ids` (each must exist)."""
    return _read(conn, SELECT_MESSAGES, ids)


_message_rows = rows_of(Message)

SELECT_NEW_MESSAGES = f"SELECT {_NEW_COLUMNS} FROM messages m WHERE m.id = ANY(%s)"


def new_messages_statement(ids: list[UUID]) -> Statement[list[Message]]:
    """Messages this transaction just inserted, by id, as `read` would give them once
    committed (in the order of `ids`; those not inserted are left out)."""

    def in_order(cur: Cursor[Any]) -> list[Message]:
        found = {m.id: m for m in _message_rows(cur)}
        return [found[i] for i in ids if i in found]

    return Statement(SELECT_NEW_MESSAGES, (ids,), in_order)


def _read(conn: Connection[Any], query: str, ids: list[UUID]) -> list[Message]:
    cur = conn.cursor(row_factory=class_row(Message))
    found = {m.id: m for m in cur.execute(query, (ids,)).fetchall()}
    return [found[i] for i in ids]


# The pair a send (or an edit) made: the user message with that key, and the
# first answer to it (later ones are its regenerations).
SELECT_EXCHANGE_BY_CLIENT_ID = f"""
SELECT {COLUMNS} FROM messages m
WHERE m.id = (SELECT u.id FROM messages u
              WHERE u.conversation_id = %(conversation)s AND u.client_message_id = %(client)s)
   OR m.id = (SELECT a.id FROM messages a
              WHERE a.reply_to = (SELECT u.id FROM messages u
                                  WHERE u.conversation_id = %(conversation)s
                                    AND u.client_message_id = %(client)s)
              ORDER BY a.seq LIMIT 1)
ORDER BY m.seq
"""


def earlier_exchange_statement(
    conversation_id: UUID, client_message_id: str
) -> Statement[Exchange | None]:
    """The pair an earlier send or edit with this client_message_id created."""

    def pair(cur: Cursor[Any]) -> Exchange | None:
        rows = _message_rows(cur)
        return Exchange(rows[0], rows[1]) if len(rows) == 2 else None

    params = {"conversation": conversation_id, "client": client_message_id}
    return Statement(SELECT_EXCHANGE_BY_CLIENT_ID, params, pair)


SELECT_MESSAGE = f"""
SELECT {COLUMNS} FROM messages m JOIN conversations c ON c.id = m.conversation_id
WHERE m.id = %(id)s AND {VISIBLE_TO}
"""


def get(conn: Connection[Any], user_id: UUID, message_id: UUID) -> Message | None:
    """A message in a conversation the user may see, with its true status and content."""
    cur = conn.cursor(row_factory=class_row(Message))
    return cur.execute(SELECT_MESSAGE, {"id": message_id, "user": user_id}).fetchone()


def get_visible(conn: Connection[Any], user_id: UUID, message_id: UUID) -> Message:
    """A message the user may see, or NotFound."""
    message = get(conn, user_id, message_id)
    if message is None:
        raise NotFound("No such message.")
    return message


SELECT_MESSAGE_BY_ID = f"SELECT {COLUMNS} FROM messages m WHERE m.id = %s"


def get_any(conn: Connection[Any], message_id: UUID) -> Message | None:
    """A message by id, without a visibility check (for fan-out to already-authorised streams)."""
    cur = conn.cursor(row_factory=class_row(Message))
    return cur.execute(SELECT_MESSAGE_BY_ID, (message_id,)).fetchone()


# A branch, first message first, with every message's versions: the versions of
# all its messages are read in one pass over the conversation (grouped by parent;
# a first message's parent is the nil UUID here), rather than one query each. Each
# message of the branch is looked up by its key (OFFSET 0 keeps the subquery apart):
# joined to the walk, whose length the planner guesses at a hundred, a table of some
# thousand messages gets hashed whole.
_BRANCH = f"""
WITH s AS (
    SELECT coalesce(s.parent_id, '00000000-0000-0000-0000-000000000000') AS parent,
           array_agg(s.id ORDER BY s.seq) AS ids
    FROM messages s
    WHERE s.conversation_id = (SELECT x.conversation_id FROM messages x WHERE x.id = %(leaf)s)
    GROUP BY 1
)
SELECT x.*, s.ids AS sibling_ids
FROM message_branch(%(leaf)s) b
CROSS JOIN LATERAL (
    SELECT {_COLUMNS.format(**_AS_COMMITTED)} FROM messages m WHERE m.id = b.id OFFSET 0
) x
JOIN s ON s.parent = coalesce(x.parent_id, '00000000-0000-0000-0000-000000000000')
ORDER BY b.depth DESC
"""


def branch(conn: Connection[Any], leaf_id: UUID | None) -> list[Message]:
    """The branch ending at `leaf_id`, first message first (empty for None)."""
    if leaf_id is None:
        return []
    cur = conn.cursor(row_factory=class_row(Message))
    return cur.execute(_BRANCH, {"leaf": leaf_id}).fetchall()


SELECT_CURRENT_LEAF = "SELECT current_leaf_id FROM conversations WHERE id = %s"


def current_branch(conn: Connection[Any], conversation_id: UUID) -> list[Message]:
    """The messages of the branch a conversation shows, in order."""
    row = conn.execute(SELECT_CURRENT_LEAF, (conversation_id,)).fetchone()
    return branch(conn, row[0] if row else None)


# One snapshot gives the status, the lengths, the text, the reasoning and the
# parts together, so a reader never pairs text with a status or a tool state from
# a different moment. While streaming, only the chunks that reach past the
# offset are read; the parts are read only for an answer that has more than text.
SELECT_PARTS_FROM = """
SELECT m.id AS message_id, m.conversation_id, m.status, m.epoch,
       n.content_length, n.reasoning_length, m.tool_version, m.layout,
       CASE WHEN m.status = 'streaming' THEN coalesce((
           SELECT substr(string_agg(c.content, '' ORDER BY c.start_offset),
                         %(content)s - min(c.start_offset) + 1)
           FROM message_chunks c
           WHERE c.batch_id >= coalesce(m.batches_from, 0)
             AND c.message_id = m.id AND c.kind = 'text'
             AND c.start_offset + char_length(c.content) > %(content)s), '')
       ELSE substr(m.content, %(content)s + 1) END AS text,
       CASE WHEN n.reasoning_length <= %(reasoning)s THEN ''
            WHEN m.status = 'streaming' THEN coalesce((
           SELECT substr(string_agg(c.content, '' ORDER BY c.start_offset),
                         %(reasoning)s - min(c.start_offset) + 1)
           FROM message_chunks c
           WHERE c.batch_id >= coalesce(m.batches_from, 0)
             AND c.message_id = m.id AND c.kind = 'reasoning'
             AND c.start_offset + char_length(c.content) > %(reasoning)s), '')
       ELSE coalesce(substr((
           SELECT string_agg(p ->> 'text', '' ORDER BY k)
           FROM jsonb_array_elements(m.parts) WITH ORDINALITY AS e(p, k)
           WHERE p ->> 'type' = 'reasoning'), %(reasoning)s + 1), '') END AS reasoning,
       CASE WHEN m.layout IS NOT NULL OR n.reasoning_length > 0 OR m.tool_version > 0
            THEN message_parts(m) END AS parts,
       m.usage, m.error
FROM messages m,
     -- Each length read once (OFFSET 0 keeps the planner from copying the calls).
     LATERAL (SELECT message_committed(m, 'text') AS content_length,
                     message_committed(m, 'reasoning') AS reasoning_length OFFSET 0) n
WHERE m.id = %(id)s
"""


def parts_from(
    conn: Connection[Any], message_id: UUID, content: int, reasoning: int = 0
) -> PartsFrom | None:
    """The answer after `content` code points of text and `reasoning` of reasoning."""
    cur = conn.cursor(row_factory=class_row(PartsFrom))
    params = {"id": message_id, "content": content, "reasoning": reasoning}
    return cur.execute(SELECT_PARTS_FROM, params).fetchone()


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
