"""The fenced writes of a streaming answer: checkpoint, finish, release, and reading back.

Each statement is a named constant next to the one function that runs it. None
commits: the checkpointer owns the transaction. Every write is conditional on
the stream's epoch (a checkpoint also on the owner's fence), so a stream another
process took over matches no row and is left out of what a function returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from psycopg import Connection

from chatsvc.engine import events
from chatsvc.engine.parts import Entry
from chatsvc.engine.stream import Meter, Stream, Take

# One call checkpoints every stream in the batch: the owner's fence, then the
# checkpoint statement, in a function the checkpointer's connection creates for
# its session (`prepare`): in pg_temp, so the statement ships with the code that
# calls it; no migration, and no two versions of chatsvc sharing one definition
# during a rolling deploy. Text alone, the common case, is that one call in a
# transaction of its own: one round trip per commit, where BEGIN, fence,
# statement, COMMIT took four (measured under gevent: 0.19 ms of client CPU per
# commit against 0.55, and 0.30 ms wall against 0.84). A stream whose epoch no
# longer matches, or that no longer streams (taken over, ended, or fenced), is
# simply not returned, and nothing of it is written. The owner of the epoch is
# the only writer, so the offsets it writes at are the committed lengths
# (readers take a streaming answer's lengths from its chunks: message_committed
# in migration 0006). It appends one chunk_batches row holding every stream's
# new text and reasoning, each entry at its committed offset (one row's overhead
# per transaction, not per stream: see migration 0006).
#
# Only a stream marked `renew` has its row updated: its lease (renewed every
# lease/3, not at every checkpoint), its lengths and checkpoint time, and its
# layout, tool version and step when they changed (NULL leaves layout and
# step). The others' rows are only read: text alone writes nothing but its
# entry in the batch row. Reading takes no row lock, so what stops a takeover
# from passing an in-flight checkpoint is the fence: each checkpoint takes its
# owner's fence shared, in a statement of its own (the function is volatile, so
# the checkpoint statement's snapshot is taken after the fence), and a takeover
# takes the fence of each owner it claims from exclusively before it claims
# (leases.FENCE_OWNERS): it waits for the owner's checkpoints in flight, reads
# their text, and any later one waits for it, then sees the new epoch.
#
# It also NOTIFYs what it committed: each stream comes with its item (the items
# of its events, joined) and payload number, made by events.joined and
# events.pack, and the items of the rows written are joined per payload number.
# Only here is it known which rows were written, and leaving the others out
# only shrinks a payload.
CHECKPOINT_FUNCTION = """
CREATE OR REPLACE FUNCTION pg_temp.chatsvc_checkpoint(
    fence_class integer, owner text, lease double precision, channel text,
    ids uuid[], epochs integer[], starts integer[], texts text[], rstarts integer[],
    reasonings text[], layouts text[], versions integer[], steps integer[], renews boolean[],
    items text[], payloads integer[])
RETURNS TABLE (message_id uuid, cancel boolean, notified bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM pg_advisory_xact_lock_shared(fence_class, hashtext(owner));
    RETURN QUERY
    WITH b AS (
        SELECT * FROM unnest(ids, epochs, starts, texts, rstarts, reasonings, layouts, versions,
                             steps, renews, items, payloads) WITH ORDINALITY
            AS b(id, epoch, start_offset, content, rstart, reasoning, layout, version, step,
                 renew, item, payload, n)
    ), renewed AS (
        UPDATE messages m
        SET content_length = b.start_offset + char_length(b.content),
            last_checkpoint_at = CASE WHEN b.content <> '' OR b.reasoning <> '' THEN now()
                                      ELSE m.last_checkpoint_at END,
            lease_expires_at = now() + lease * interval '1 second',
            reasoning_length = b.rstart + char_length(b.reasoning),
            tool_version = b.version,
            step = coalesce(b.step, m.step),
            layout = coalesce(b.layout::jsonb, m.layout)
        FROM b
        WHERE b.renew AND m.id = b.id AND m.epoch = b.epoch AND m.status = 'streaming'
        RETURNING m.id, m.epoch, m.cancel_requested_at IS NOT NULL AS cancel,
                  b.start_offset, b.content, b.rstart, b.reasoning, b.item, b.payload, b.n
    ), m AS (
        SELECT * FROM renewed
        UNION ALL
        SELECT m.id, m.epoch, m.cancel_requested_at IS NOT NULL,
               b.start_offset, b.content, b.rstart, b.reasoning, b.item, b.payload, b.n
        FROM b JOIN messages m ON m.id = b.id
        WHERE NOT b.renew AND m.epoch = b.epoch AND m.status = 'streaming'
    ), e AS (
        SELECT n, 0 AS k, id, 'text' AS kind, start_offset, epoch, content
        FROM m WHERE content <> ''
        UNION ALL
        SELECT n, 1, id, 'reasoning', rstart, epoch, reasoning FROM m WHERE reasoning <> ''
    ), c AS (
        INSERT INTO chunk_batches (message_ids, kinds, starts, epochs, texts)
        SELECT array_agg(id ORDER BY n, k), array_agg(kind ORDER BY n, k),
               array_agg(start_offset ORDER BY n, k), array_agg(epoch ORDER BY n, k),
               array_agg(content ORDER BY n, k)
        FROM e HAVING count(*) > 0
    ), sent AS (
        SELECT pg_notify(channel, '[' || string_agg(item, ',' ORDER BY n) || ']')
        FROM m WHERE item IS NOT NULL GROUP BY payload
    )
    SELECT id, cancel, (SELECT count(*) FROM sent) FROM m;
END
$$
"""
CHECKPOINT = """
SELECT * FROM pg_temp.chatsvc_checkpoint(
    %(fence_class)s, %(owner)s, %(lease)s, %(channel)s, %(ids)s, %(epochs)s, %(starts)s,
    %(texts)s, %(rstarts)s, %(reasonings)s, %(layouts)s, %(versions)s, %(steps)s, %(renews)s,
    %(items)s, %(payloads)s)
"""


def prepare(conn: Connection[Any]) -> None:
    """Create the checkpoint function for the connection's session (the checkpointer's)."""
    conn.execute(CHECKPOINT_FUNCTION)


@dataclass
class Checkpointed:
    """What a checkpoint wrote: the streams still ours, their events, and cancels to honour."""

    written: set[Stream] = field(default_factory=set)
    deltas: list[events.Event] = field(default_factory=list)
    cancels: list[UUID] = field(default_factory=list)


# The first key of the fence's two-key advisory lock (the second: the owner's
# name, hashed; CHECKPOINT takes it shared).
FENCE_CLASS = 0x63737666  # 'csvf'


def checkpoint(
    conn: Connection[Any],
    streams: list[Stream],
    takes: dict[Stream, Take],
    lease_s: float,
    *,
    owner: str,
    renew: set[Stream],
) -> Checkpointed:
    """Append each stream's text and reasoning, renew the leases of `renew` (and write their
    rows), NOTIFY what it committed, fenced first; in the caller's transaction, if any, on a
    connection `prepare`d for it."""
    if not streams:
        return Checkpointed()
    items = [events.joined(takes[s].events) for s in streams]
    params = {
        "ids": [s.message_id for s in streams],
        "epochs": [s.epoch for s in streams],
        "starts": [s.committed for s in streams],
        "texts": [takes[s].text for s in streams],
        "rstarts": [s.committed_reasoning for s in streams],
        "reasonings": [takes[s].reasoning for s in streams],
        "layouts": [_json(takes[s].layout) for s in streams],
        "versions": [takes[s].version for s in streams],
        "steps": [takes[s].step for s in streams],
        "renews": [s in renew for s in streams],
        "items": items,
        "payloads": events.pack(items),
        "lease": lease_s,
        "channel": events.CHANNEL,
        "fence_class": FENCE_CLASS,
        "owner": owner,
    }
    rows = conn.execute(CHECKPOINT, params).fetchall()
    ok = {row[0] for row in rows}
    written = {s for s in streams if s.message_id in ok}
    return Checkpointed(
        written,
        [e for s in streams if s in written for e in takes[s].events],
        [row[0] for row in rows if row[1]],
    )


def _json(layout: list[Entry] | None) -> str | None:
    return None if layout is None else json.dumps(layout, ensure_ascii=False)


# The usage of a model call that asked for tools, in the transaction that
# records its calls (the last call of an answer is metered by FINISH).
METER = """
INSERT INTO llm_calls (message_id, user_id, epoch, step, model, prompt_tokens, completion_tokens,
                       estimated)
SELECT m.id, m.user_id, m.epoch, %(step)s, %(model)s, %(prompt)s, %(completion)s, %(estimated)s
FROM messages m WHERE m.id = %(id)s AND m.epoch = %(epoch)s AND m.status = 'streaming'
"""


def meter(conn: Connection[Any], stream: Stream, meters: list[Meter]) -> None:
    """Record model calls' usage (the caller's transaction, fenced by the stream's epoch)."""
    for one in meters:
        conn.execute(
            METER,
            {
                "id": stream.message_id,
                "epoch": stream.epoch,
                "step": one.step,
                "model": stream.model,
                "prompt": int(one.usage.get("prompt_tokens", 0)),
                "completion": int(one.usage.get("completion_tokens", 0)),
                "estimated": one.estimated,
            },
        )


# Content (its text chunks: never reasoning), parts, status, usage and error of a
# finished answer in one statement. The owner passes the text when it wrote all
# of it (an answer it did not take over or continue), and then the chunks are not
# read at all: reading an answer's chunks scans every batch written while it
# streamed, which with hundreds of answers streaming cost more Postgres CPU than
# everything else. A plain answer's parts are its text, so they are not stored
# (NULL: writing the text twice was a quarter of all WAL); other answers' parts,
# and a taken-over answer's text, are assembled from the chunks. Its chunks stay in
# their batches, shared with other answers, until the reaper's sweep deletes
# them. The checkpointer commits the answer's pending text, and the llm_calls
# rows of its model calls, before it in the same transaction, so the chunks hold
# all of the text and `usage` is the sum over every call.
FINISH = """
WITH m AS (
    UPDATE messages m
    SET status = %(status)s,
        content = coalesce(%(content)s::text, message_text(m)),
        parts = CASE WHEN m.layout IS NOT NULL OR %(reasoning)s > 0 THEN message_parts(m) END,
        usage = jsonb_build_object(
            'prompt_tokens', coalesce(
                (SELECT sum(l.prompt_tokens) FROM llm_calls l WHERE l.message_id = m.id), 0),
            'completion_tokens', coalesce(
                (SELECT sum(l.completion_tokens) FROM llm_calls l WHERE l.message_id = m.id), 0),
            'estimated', coalesce(
                (SELECT bool_or(l.estimated) FROM llm_calls l WHERE l.message_id = m.id), false)),
        error = %(error)s,
        completed_at = clock_timestamp(),
        last_checkpoint_at = now(),
        owner = NULL,
        lease_expires_at = NULL,
        content_length = %(length)s,
        reasoning_length = %(reasoning)s
    WHERE m.id = %(id)s AND m.epoch = %(epoch)s AND m.status = 'streaming'
      AND (%(content)s::text IS NOT NULL OR message_committed(m, 'text') = %(length)s)
    RETURNING m.id, m.usage, m.conversation_id
)
SELECT m.usage, c.project_id, c.user_id FROM m JOIN conversations c ON c.id = m.conversation_id
"""


def finish(
    conn: Connection[Any], stream: Stream, length: int, content: str | None, reasoning: int
) -> list[events.Event] | None:
    """Commit the Ending of a stream whose text is committed up to `length` (`content`, when
    this process wrote all of it) and its reasoning up to `reasoning`; its events, or None."""
    ending = stream.ending
    assert ending is not None
    row = conn.execute(
        FINISH,
        {
            "id": stream.message_id,
            "epoch": stream.epoch,
            "length": length,
            "content": content,
            "reasoning": reasoning,
            "status": ending.status,
            "error": ending.error,
        },
    ).fetchone()
    if row is None:
        return None
    usage, project_id, creator_id = row
    return [
        events.Finished(
            stream.conversation_id, stream.message_id, ending.status, length, usage, ending.error
        ),
        events.room_event(
            project_id,
            creator_id,
            "stream.finished",
            conversation_id=stream.conversation_id,
            message_id=stream.message_id,
            status=ending.status,
            content_length=length,
        ),
    ]


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


ROWS_NOW = """
SELECT id, epoch, status, message_committed(m, 'text'), message_committed(m, 'reasoning'),
       tool_version
FROM messages m WHERE id = ANY(%s)
"""


@dataclass(frozen=True)
class RowNow:
    """An answer's row as the database has it, to learn whether a commit happened."""

    epoch: int
    status: str
    content_length: int
    reasoning_length: int
    tool_version: int


def rows_now(conn: Connection[Any], streams: list[Stream]) -> dict[UUID, RowNow]:
    """Epoch, status, committed lengths and tool version of each stream's row."""
    rows = conn.execute(ROWS_NOW, ([s.message_id for s in streams],)).fetchall()
    return {row[0]: RowNow(*row[1:]) for row in rows}
