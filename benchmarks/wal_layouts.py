"""WAL per answer and checkpoint for four ways of storing streaming text, in SQL alone.

Each answer gets 100 checkpoints of 20 characters (a 100 ms checkpoint at 50
tokens of 4 characters a second), for 1, 10 and 50 answers committed together:

- `row per answer`: what chatsvc wrote before migration 0006, a chunk row per
  answer (with its primary-key entry) and an update of the answer's row
  (length, checkpoint time, lease);
- `rows, no message update`: the same chunk rows without the row update;
- `one row per transaction`: a single row carrying every answer's text;
- `one row per transaction, message update`: that row and the update of each
  answer's row, what chatsvc writes since 0006.

The chunks are deleted at the end, as finishing an answer does. It creates and
drops its own tables (`wal_layout_*`); WAL is the whole server's, so run it on a
server nothing else writes to.

    DATABASE_URL=... python -m benchmarks.wal_layouts
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

CHECKPOINTS = 100
CHARS = 20
SETUP = """
DROP TABLE IF EXISTS wal_layout_chunks, wal_layout_batches, wal_layout_messages;
CREATE TABLE wal_layout_messages (id uuid PRIMARY KEY, content_length int,
    last_checkpoint_at timestamptz, lease_expires_at timestamptz, rest text) WITH (fillfactor = 80);
CREATE TABLE wal_layout_chunks (message_id uuid, kind "char" DEFAULT 't', start_offset int,
    epoch int, content text, PRIMARY KEY (message_id, kind, start_offset));
CREATE TABLE wal_layout_batches (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_ids uuid[], starts int[], epochs int[], texts text[]);
"""
ROW_PER_ANSWER = """
WITH b AS (SELECT * FROM unnest(%(ids)s::uuid[], %(texts)s::text[]) AS b(id, t)),
m AS (UPDATE wal_layout_messages m SET content_length = content_length + %(chars)s,
          last_checkpoint_at = now(), lease_expires_at = now() + interval '10 seconds'
      FROM b WHERE m.id = b.id RETURNING m.id, b.t)
INSERT INTO wal_layout_chunks (message_id, start_offset, epoch, content)
SELECT id, %(start)s, 1, t FROM m
"""
ROWS = """
INSERT INTO wal_layout_chunks (message_id, start_offset, epoch, content)
SELECT id, %(start)s, 1, t FROM unnest(%(ids)s::uuid[], %(texts)s::text[]) AS b(id, t)
"""
BATCH = """
INSERT INTO wal_layout_batches (message_ids, starts, epochs, texts)
SELECT %(ids)s, array_fill(%(start)s, ARRAY[%(n)s]), array_fill(1, ARRAY[%(n)s]), %(texts)s
"""
BATCH_AND_UPDATE = """
WITH m AS (UPDATE wal_layout_messages m SET content_length = content_length + %(chars)s,
               last_checkpoint_at = now(), lease_expires_at = now() + interval '10 seconds'
           FROM unnest(%(ids)s::uuid[]) AS b(id) WHERE m.id = b.id RETURNING m.id)
INSERT INTO wal_layout_batches (message_ids, starts, epochs, texts)
SELECT %(ids)s, array_fill(%(start)s, ARRAY[%(n)s]), array_fill(1, ARRAY[%(n)s]), %(texts)s
WHERE (SELECT count(*) FROM m) > 0
"""


def wal_position(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


def measure(conn: psycopg.Connection[Any], ids: list[uuid.UUID], statement: str) -> float:
    """WAL bytes per answer and checkpoint: the checkpoints, then the chunks' delete."""
    conn.execute("CHECKPOINT")  # every layout starts after one, with the same full-page images
    before = wal_position(conn)
    for k in range(CHECKPOINTS):
        texts = ["".join(random.choices("abcdefghijklmnopqrstuvwxyz ", k=CHARS)) for _ in ids]
        params = {"ids": ids, "texts": texts, "start": k * CHARS, "chars": CHARS, "n": len(ids)}
        conn.execute(statement, params)
    conn.execute("DELETE FROM wal_layout_chunks")
    conn.execute("DELETE FROM wal_layout_batches")
    return (wal_position(conn) - before) / (len(ids) * CHECKPOINTS)


def main() -> None:
    layouts: dict[str, Callable[[psycopg.Connection[Any], list[uuid.UUID]], float]] = {
        "row per answer": lambda conn, ids: measure(conn, ids, ROW_PER_ANSWER),
        "rows, no message update": lambda conn, ids: measure(conn, ids, ROWS),
        "one row per transaction": lambda conn, ids: measure(conn, ids, BATCH),
        "one row per transaction, message update": lambda conn, ids: measure(
            conn, ids, BATCH_AND_UPDATE
        ),
    }
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(SETUP)
        try:
            print("| answers | " + " | ".join(layouts) + " |")
            print("|---" * (len(layouts) + 1) + "|")
            for count in (1, 10, 50):
                ids = [uuid.uuid4() for _ in range(count)]
                conn.execute(
                    "INSERT INTO wal_layout_messages "
                    "SELECT id, 0, now(), now(), repeat('x', 300) FROM unnest(%s::uuid[]) id",
                    (ids,),
                )
                cells = [f"{run(conn, ids):.0f} B" for run in layouts.values()]
                print(f"| {count} | " + " | ".join(cells) + " |", flush=True)
                conn.execute("TRUNCATE wal_layout_messages")
        finally:
            conn.execute("DROP TABLE wal_layout_chunks, wal_layout_batches, wal_layout_messages")


if __name__ == "__main__":
    main()
