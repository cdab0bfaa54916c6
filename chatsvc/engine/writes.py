"""The fenced writes of a streaming answer: checkpoint, finish, release, and reading back.

Each statement is a named constant next to the one function that runs it. None
commits: the checkpointer owns the transaction (the checkpoint statement alone
is its own). Every write is conditional on the stream's epoch (and committed
length), so a stream another process took over matches no row and is left out
of what a function returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from psycopg import Connection

from chatsvc.engine import events
from chatsvc.engine.stream import Stream

# One statement checkpoints every stream in the batch, and is its own
# transaction: one round trip to commit any number of streams. A stream whose
# epoch or committed length no longer matches (taken over, ended, or fenced) is
# simply not returned, and its text is never written.
#
# It also NOTIFYs the new text of the rows it wrote: each stream comes with its
# item and payload number, made by events.item and events.pack, and the items of
# the rows written are joined per payload number. Only here is it known which
# rows were written, and leaving the others out only shrinks a payload.
CHECKPOINT = """
WITH b AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(epochs)s::int[], %(starts)s::int[], %(texts)s::text[],
                         %(items)s::text[], %(payloads)s::int[]) WITH ORDINALITY
        AS b(id, epoch, start_offset, content, item, payload, n)
), m AS (
    UPDATE messages m
    SET content_length = b.start_offset + char_length(b.content),
        last_checkpoint_at = CASE WHEN b.content <> '' THEN now() ELSE m.last_checkpoint_at END,
        lease_expires_at = now() + %(lease)s * interval '1 second'
    FROM b
    WHERE m.id = b.id AND m.epoch = b.epoch AND m.status = 'streaming'
      AND m.content_length = b.start_offset
    RETURNING m.id, m.epoch, m.cancel_requested_at IS NOT NULL AS cancel,
              b.start_offset, b.content, b.item, b.payload, b.n
), c AS (
    INSERT INTO message_chunks (message_id, start_offset, epoch, content)
    SELECT id, start_offset, epoch, content FROM m WHERE content <> ''
), sent AS (
    SELECT pg_notify(%(channel)s, '[' || string_agg(item, ',' ORDER BY n) || ']')
    FROM m WHERE item IS NOT NULL GROUP BY payload
)
SELECT id, cancel, (SELECT count(*) FROM sent) FROM m
"""


@dataclass
class Checkpointed:
    """What a checkpoint wrote: the streams still ours, their deltas, and cancels to honour."""

    written: set[Stream] = field(default_factory=set)
    deltas: list[events.Event] = field(default_factory=list)
    cancels: list[UUID] = field(default_factory=list)


def checkpoint(
    conn: Connection[Any], streams: list[Stream], texts: dict[Stream, str], lease_s: float
) -> Checkpointed:
    """Append each stream's text at its committed offset, renew its lease, and NOTIFY the text."""
    if not streams:
        return Checkpointed()
    deltas = [s.delta(texts[s]) if texts[s] else None for s in streams]
    items = [None if delta is None else events.item(delta) for delta in deltas]
    params = {
        "ids": [s.message_id for s in streams],
        "epochs": [s.epoch for s in streams],
        "starts": [s.committed for s in streams],
        "texts": [texts[s] for s in streams],
        "items": items,
        "payloads": events.pack(items),
        "lease": lease_s,
        "channel": events.CHANNEL,
    }
    rows = conn.execute(CHECKPOINT, params).fetchall()
    ok = {row[0] for row in rows}
    written = {s for s in streams if s.message_id in ok}
    return Checkpointed(
        written,
        [d for s, d in zip(streams, deltas, strict=True) if d and s in written],
        [row[0] for row in rows if row[1]],
    )


# Content, status, usage and error of a finished answer, and its LLM call, in one
# statement; the chunks it was assembled from are deleted in the same snapshot.
FINISH = """
WITH m AS (
    UPDATE messages m
    SET status = %(status)s,
        content = coalesce((SELECT string_agg(c.content, '' ORDER BY c.start_offset)
                            FROM message_chunks c WHERE c.message_id = m.id), '') || %(tail)s,
        content_length = %(length)s,
        usage = jsonb_build_object(
            'prompt_tokens', %(prompt)s + coalesce(
                (SELECT sum(l.prompt_tokens) FROM llm_calls l WHERE l.message_id = m.id), 0),
            'completion_tokens', %(completion)s + coalesce(
                (SELECT sum(l.completion_tokens) FROM llm_calls l WHERE l.message_id = m.id), 0),
            'estimated', %(estimated)s OR coalesce(
                (SELECT bool_or(l.estimated) FROM llm_calls l WHERE l.message_id = m.id), false)),
        error = %(error)s,
        completed_at = clock_timestamp(),
        last_checkpoint_at = now(),
        owner = NULL,
        lease_expires_at = NULL
    WHERE m.id = %(id)s AND m.epoch = %(epoch)s AND m.status = 'streaming'
      AND m.content_length = %(start)s
    RETURNING m.id, m.user_id, m.usage,
              (SELECT c.project_id FROM conversations c WHERE c.id = m.conversation_id) AS project
), calls AS (
    INSERT INTO llm_calls (message_id, user_id, epoch, model, prompt_tokens, completion_tokens,
                           estimated)
    SELECT id, user_id, %(epoch)s, %(model)s, %(prompt)s, %(completion)s, %(estimated)s
    FROM m WHERE %(called)s
), chunks AS (
    DELETE FROM message_chunks c USING m WHERE c.message_id = m.id
)
SELECT usage, project FROM m
"""


def finish(conn: Connection[Any], stream: Stream, tail: str) -> list[events.Event] | None:
    """Commit the stream's Ending with its last text; the events announcing it, None if fenced."""
    ending = stream.ending
    assert ending is not None
    usage = ending.usage or {}
    length = stream.committed + len(tail)
    row = conn.execute(
        FINISH,
        {
            "id": stream.message_id,
            "epoch": stream.epoch,
            "start": stream.committed,
            "tail": tail,
            "length": length,
            "status": ending.status,
            "error": ending.error,
            "model": stream.model,
            "prompt": int(usage.get("prompt_tokens", 0)),
            "completion": int(usage.get("completion_tokens", 0)),
            "estimated": ending.estimated,
            "called": ending.called,
        },
    ).fetchone()
    if row is None:
        return None
    announced: list[events.Event] = [stream.delta(tail)] if tail else []
    usage, project_id = row
    announced.append(
        events.Finished(
            stream.conversation_id, stream.message_id, ending.status, length, usage, ending.error
        )
    )
    if project_id is not None:
        announced.append(
            events.project_event(
                project_id,
                "stream.finished",
                conversation_id=stream.conversation_id,
                message_id=stream.message_id,
                status=ending.status,
                content_length=length,
            )
        )
    return announced


# Handing streams over on shutdown: no owner, lease expired now, so any live
# process takes them over at once (see leases.TAKE_OVER).
RELEASE = """
UPDATE messages m SET owner = NULL, lease_expires_at = now()
FROM unnest(%(ids)s::uuid[], %(epochs)s::int[]) AS b(id, epoch)
WHERE m.id = b.id AND m.epoch = b.epoch AND m.status = 'streaming'
RETURNING m.id
"""


def release(conn: Connection[Any], streams: list[Stream]) -> set[Stream]:
    """Clear owner and lease of the streams still ours, so another process takes them over now."""
    if not streams:
        return set()
    params = {"ids": [s.message_id for s in streams], "epochs": [s.epoch for s in streams]}
    done = {row[0] for row in conn.execute(RELEASE, params)}
    return {s for s in streams if s.message_id in done}


ROWS_NOW = "SELECT id, epoch, status, content_length FROM messages WHERE id = ANY(%s)"


def rows_now(conn: Connection[Any], streams: list[Stream]) -> dict[UUID, tuple[int, str, int]]:
    """Epoch, status and committed length of each stream's row, as the database has them."""
    rows = conn.execute(ROWS_NOW, ([s.message_id for s in streams],)).fetchall()
    return {row[0]: (row[1], row[2], row[3]) for row in rows}
