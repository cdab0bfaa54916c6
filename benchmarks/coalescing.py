"""What the coalescing bound costs and saves: WAL, transactions and commit delay, in-process.

A real `Checkpointer` is fed 4-character tokens every 20 ms (a real model's pace)
for answers of 2,000 characters, at each bound (`CHATSVC_CHECKPOINT_MIN_MS`) and
number of concurrent answers asked, and reports WAL per content byte, transactions
per second per 100 answers, characters per checkpoint and the delay from a token's
arrival to its commit (p50 and p99). No model, no HTTP: the checkpoint path alone.
WAL is the whole server's: run it on a server nothing else writes to.

    DATABASE_URL=... python -m benchmarks.coalescing [--bounds 0,25,50,100] [--answers 1,10,50]

DATABASE_URL must name a scratch database migrated by `chatsvc db upgrade`: the run
adds a user, conversations and answers to it.
"""

from gevent import monkey

monkey.patch_all()  # before psycopg is imported

import argparse
import os
import random
import time
import uuid
from typing import Any

import gevent
import psycopg

from chatsvc.config import Settings
from chatsvc.engine import events
from chatsvc.engine.checkpoint import Checkpointer
from chatsvc.engine.stream import Ending, Stream

TOKEN_CHARS = 4
LETTERS = "abcdefghijklmnopqrstuvwxyz "


def answers(conn: psycopg.Connection[Any], count: int) -> list[Stream]:
    """`count` streaming answers owned by this process, each in its own conversation."""
    user = conn.execute(
        "INSERT INTO users (name) VALUES (%s) RETURNING id", (f"coalesce-{uuid.uuid4().hex[:8]}",)
    ).fetchone()
    assert user is not None
    streams = []
    for _ in range(count):
        row = conn.execute(
            "WITH c AS (INSERT INTO conversations (user_id) VALUES (%(u)s) RETURNING id) "
            "INSERT INTO messages (conversation_id, role, status, epoch, owner, lease_expires_at) "
            "SELECT id, 'assistant', 'streaming', 1, 'bench', now() + interval '1 minute' FROM c "
            "RETURNING id, conversation_id",
            {"u": user[0]},
        ).fetchone()
        assert row is not None
        streams.append(Stream(row[0], row[1], user[0], "m", epoch=1, committed=0))
    return streams


def wal_position(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


def run(url: str, bound_ms: int, count: int, tokens: int, delay: float) -> dict[str, Any]:
    """One measurement: `count` answers of `tokens` tokens at one token per `delay` seconds."""
    arrived: dict[tuple[uuid.UUID, int], float] = {}
    delays: list[float] = []

    def publish(batch: list[events.Event]) -> None:
        now = time.monotonic()
        for event in batch:
            if isinstance(event, events.Delta):
                for offset in range(event.start, event.end, TOKEN_CHARS):
                    at = arrived.pop((event.message_id, offset), None)
                    if at is not None:
                        delays.append((now - at) * 1000)

    settings = Settings(checkpoint_ms=max(bound_ms, 100), checkpoint_min_ms=bound_ms)
    with psycopg.connect(url, autocommit=True) as conn:
        streams = answers(conn, count)
        checkpointer = Checkpointer(url, settings, publish)
        for stream in streams:
            checkpointer.adopt(stream)
        checkpointer.start()
        before = wal_position(conn)

        def generate(stream: Stream, phase: float) -> None:
            gevent.sleep(phase)
            start = time.monotonic()
            for k in range(tokens):
                gevent.sleep(max(0.0, start + k * delay - time.monotonic()))
                arrived[(stream.message_id, k * TOKEN_CHARS)] = time.monotonic()
                checkpointer.append(stream, "".join(random.choices(LETTERS, k=TOKEN_CHARS)))
            checkpointer.end(stream, Ending("completed"))

        gevent.joinall([gevent.spawn(generate, s, random.uniform(0, 5 * delay)) for s in streams])
        wal = wal_position(conn) - before
        checkpointer.stop()
    stats = checkpointer.stats
    delays.sort()
    return {
        "bound_ms": bound_ms,
        "answers": count,
        "wal_per_content_byte": round(wal / (count * tokens * TOKEN_CHARS), 1),
        "transactions_per_s_per_100": round(stats.transactions / (tokens * delay) * 100 / count),
        "chars_per_checkpoint": round(stats.chars / max(stats.checkpoints, 1), 1),
        "delay_p50_ms": round(delays[len(delays) // 2], 1),
        "delay_p99_ms": round(delays[int(len(delays) * 0.99)], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.coalescing")
    parser.add_argument("--bounds", default="0,25,50,100", help="bounds in ms, comma-separated")
    parser.add_argument("--answers", default="1,10,50", help="concurrent answers, comma-separated")
    parser.add_argument("--tokens", type=int, default=500, help="tokens per answer")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds between tokens")
    args = parser.parse_args()
    url = os.environ["DATABASE_URL"]
    print(
        "| bound (ms) | answers | WAL per content byte | transactions/s per 100 answers "
        "| characters per checkpoint | commit delay p50 / p99 (ms) |"
    )
    print("|---|---|---|---|---|---|")
    for count in (int(x) for x in args.answers.split(",")):
        for bound in (int(x) for x in args.bounds.split(",")):
            r = run(url, bound, count, args.tokens, args.delay)
            print(
                f"| {bound} | {count} | {r['wal_per_content_byte']} "
                f"| {r['transactions_per_s_per_100']:,} | {r['chars_per_checkpoint']} "
                f"| {r['delay_p50_ms']} / {r['delay_p99_ms']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
