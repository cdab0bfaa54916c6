"""The checkpoint statement: one round trip commits a batch and notifies it within limits."""

from __future__ import annotations

import random
import time
from typing import Any
from uuid import UUID

import gevent.queue
import psycopg

from chatsvc.engine import events, leases, writes
from chatsvc.engine.checkpoint import Checkpointer
from chatsvc.engine.stream import Ending, State, Stream
from tests.support import TEST_SETTINGS


def _streams(conn: psycopg.Connection[Any], count: int) -> list[Stream]:
    user = conn.execute("INSERT INTO users (name) VALUES ('cp') RETURNING id").fetchone()[0]
    streams = []
    for _ in range(count):
        conversation = conn.execute(
            "INSERT INTO conversations (user_id) VALUES (%s) RETURNING id", (user,)
        ).fetchone()[0]
        message = conn.execute(
            "INSERT INTO messages (conversation_id, role, status, epoch, owner, lease_expires_at) "
            "VALUES (%s, 'assistant', 'streaming', 1, 'me', now() + interval '1 minute') "
            "RETURNING id",
            (conversation,),
        ).fetchone()[0]
        streams.append(Stream(message, conversation, user, "m", epoch=1, committed=0))
    return streams


def test_a_batch_is_committed_and_notified_in_payloads_under_the_limit(
    conn: psycopg.Connection[Any], db_url: str
) -> None:
    streams = _streams(conn, 80)
    rng = random.Random(3)
    alphabet = ["a", "é", "漢", "😀", "\n", '"', "\\", "\x01", "\u2028"]
    texts = {s: "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300))) for s in streams}
    texts[streams[0]] = "x" * events.MAX_ITEM_BYTES  # too large to travel in a notification
    texts[streams[1]] = "\x02" * 700  # escapes to six bytes a character
    texts[streams[2]] = "\x02" * 1400  # too large once escaped
    published: list[events.Event] = []
    checkpointer = Checkpointer(db_url, TEST_SETTINGS, published.extend)
    for stream in streams:
        checkpointer.adopt(stream)
        checkpointer.append(stream, texts[stream])
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN chatsvc")
        checkpointer.checkpoint_once()
        notices = list(listener.notifies(timeout=2))
    checkpointer.stop()

    assert all(len(n.payload.encode()) < 8000 for n in notices)
    assert checkpointer.stats.transactions == 1 and len(notices) > 3
    remote = [e for n in notices for e in events.decode(n.payload)]
    assert all(isinstance(e, events.Delta) for e in remote)
    by_message = {e.message_id: e for e in remote if isinstance(e, events.Delta)}
    assert set(by_message) == {s.message_id for s in streams}
    for stream in streams:
        event = by_message[stream.message_id]
        assert (event.conversation_id, event.start, event.end) == (
            stream.conversation_id,
            0,
            len(texts[stream]),
        )
        assert event.text in (texts[stream], None)
        assert stream.committed == len(texts[stream]) and not stream.pending
    assert by_message[streams[0].message_id].text is None
    assert by_message[streams[1].message_id].text == texts[streams[1]]
    assert by_message[streams[2].message_id].text is None
    assert sum(e.text is not None for e in by_message.values()) > 70
    local = {e.message_id: e.text for e in published if isinstance(e, events.Delta)}
    assert local == {s.message_id: texts[s] for s in streams}  # locally, always the text
    rows = dict(conn.execute("SELECT message_id, content FROM message_chunks").fetchall())
    assert rows == {s.message_id: texts[s] for s in streams}
    # One row holds the text of every answer the transaction committed.
    assert conn.execute("SELECT count(*) FROM chunk_batches").fetchone() == (1,)


def test_a_fenced_stream_is_neither_written_nor_notified(
    conn: psycopg.Connection[Any], db_url: str
) -> None:
    ours, theirs = _streams(conn, 2)
    conn.execute("UPDATE messages SET epoch = 2 WHERE id = %s", (theirs.message_id,))
    checkpointer = Checkpointer(db_url, TEST_SETTINGS, lambda events: None)
    for stream in (ours, theirs):
        checkpointer.adopt(stream)
        checkpointer.append(stream, "text")
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN chatsvc")
        checkpointer.checkpoint_once()
        notices = list(listener.notifies(timeout=1))
    checkpointer.stop()
    received = [e for n in notices for e in events.decode(n.payload)]
    assert [e.message_id for e in received if isinstance(e, events.Delta)] == [ours.message_id]
    assert theirs.state is State.LOST and theirs.message_id not in checkpointer.streams
    chunks = conn.execute("SELECT message_id FROM message_chunks").fetchall()
    assert chunks == [(UUID(str(ours.message_id)),)]


def test_a_minimum_interval_holds_text_back_and_commits_it_as_one_chunk(
    conn: psycopg.Connection[Any], db_url: str
) -> None:
    (stream,) = _streams(conn, 1)
    settings = TEST_SETTINGS.with_(checkpoint_ms=500, checkpoint_min_ms=500)
    deltas: gevent.queue.Queue[tuple[float, events.Delta]] = gevent.queue.Queue()

    def publish(batch: list[events.Event]) -> None:
        for event in batch:
            if isinstance(event, events.Delta):
                deltas.put((time.monotonic(), event))

    checkpointer = Checkpointer(db_url, settings, publish)
    checkpointer.adopt(stream)
    checkpointer.start()
    try:
        asked = time.monotonic()
        checkpointer.append(stream, "a")
        first_at, first = deltas.get(timeout=5)
        checkpointer.append(stream, "b")
        checkpointer.append(stream, "c")
        second_at, second = deltas.get(timeout=5)
        chunks = conn.execute(
            "SELECT start_offset, content FROM message_chunks ORDER BY start_offset"
        ).fetchall()
        assert checkpointer.end(stream, Ending("completed"))
    finally:
        checkpointer.stop()  # returns once no stream is left
    assert not checkpointer.streams

    assert first.text == "a" and first_at - asked < 0.5  # the first text goes at once
    assert (second.start, second.text) == (1, "bc")  # the rest waited, and went together
    assert second_at - asked >= 0.5
    assert chunks == [(0, "a"), (1, "bc")]
    assert conn.execute("SELECT status, content FROM messages").fetchone() == ("completed", "abc")


def test_parts_are_checkpointed_with_the_text_in_one_statement_and_notified_together(
    conn: psycopg.Connection[Any], db_url: str
) -> None:
    ours, fenced = _streams(conn, 2)
    conn.execute("UPDATE messages SET epoch = epoch + 1 WHERE id = %s", (fenced.message_id,))
    published: list[events.Event] = []
    checkpointer = Checkpointer(db_url, TEST_SETTINGS, published.extend)
    for stream in (ours, fenced):
        checkpointer.adopt(stream)
        checkpointer.append_reasoning(stream, "hmm")
        checkpointer.append(stream, "Let me add.")
        stream.layout.tool_fragment(0, 0, "c1", "add", '{"n":')
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN chatsvc")
        checkpointer.checkpoint_once()
        notices = list(listener.notifies(timeout=1))
    checkpointer.stop()

    assert checkpointer.stats.transactions == 1 and len(notices) == 1
    received = events.decode(notices[0].payload)
    assert received == published  # one item string per stream, the fenced one left out
    delta, reasoning, tool = received
    assert isinstance(delta, events.Delta) and delta.text == "Let me add."
    assert isinstance(reasoning, events.ReasoningDelta) and (reasoning.start, reasoning.text) == (
        0,
        "hmm",
    )
    assert isinstance(tool, events.ToolChanged) and tool.part == {
        "type": "tool",
        "tool_call_id": "c1",
        "name": "add",
        "input": '{"n":',
        "state": "input-streaming",
    }
    assert fenced.state is State.LOST
    row = conn.execute(
        "SELECT content_length, reasoning_length, tool_version, layout, message_parts(m) "
        "FROM messages m WHERE id = %s",
        (ours.message_id,),
    ).fetchone()
    assert row[:3] == (11, 3, 1) and row[3] == ours.layout.entries
    assert [p["type"] for p in row[4]] == ["reasoning", "text", "tool"]
    assert (ours.committed, ours.committed_reasoning, ours.committed_version) == (11, 3, 1)


def _blocked(db_url: str, pid: int) -> bool:
    """Whether the backend waits for a lock (there is no event to await from outside)."""
    with psycopg.connect(db_url, autocommit=True) as probe:
        row = probe.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
    return row is not None and row[0] == "Lock"


def _wait_blocked(db_url: str, pid: int) -> None:
    with gevent.Timeout(10, AssertionError(f"backend {pid} never waited for the fence")):
        while not _blocked(db_url, pid):
            gevent.sleep(0.01)


def test_a_takeover_waits_for_a_checkpoint_in_flight_and_fences_the_next(
    conn: psycopg.Connection[Any], db_url: str
) -> None:
    # A checkpoint of text alone reads the answer's row without locking it; the owner's
    # fence is what orders it against a takeover.
    (stream,) = _streams(conn, 1)
    conn.execute("UPDATE messages SET lease_expires_at = now() - interval '1 second'")

    def write(owner_conn: psycopg.Connection[Any], text: str) -> writes.Checkpointed:
        stream.add_text(text)
        take = stream.take()
        done = writes.checkpoint(owner_conn, [stream], {stream: take}, 30, owner="me", renew=set())
        if stream in done.written:
            stream.taken(take)
        return done

    def take_over(taker: psycopg.Connection[Any]) -> list[Any]:
        params: dict[str, Any] = {
            "dead": [],
            "mine": [],
            "limit": 5,
            "owner": "taker",
            "lease": 30,
            "class": writes.FENCE_CLASS,
        }
        params["fenced"] = [o for o, _ in taker.execute(leases.FENCE_OWNERS, params).fetchall()]
        return taker.execute(leases.TAKE_OVER, params).fetchall()

    with psycopg.connect(db_url) as owner_conn, psycopg.connect(db_url) as taker:
        writes.prepare(owner_conn)
        owner_conn.commit()
        assert stream in write(owner_conn, "first").written  # in flight: not committed
        claiming = gevent.spawn(take_over, taker)
        _wait_blocked(db_url, taker.info.backend_pid)
        owner_conn.commit()
        (claim,) = claiming.get(timeout=10)
        assert claim[4] == 2 and claim[5] == len("first")  # epoch 2, resumed after "first"
        # Claimed, not yet committed: the owner's next checkpoint waits for the takeover,
        # then finds the new epoch and writes nothing.
        writing = gevent.spawn(write, owner_conn, " second")
        _wait_blocked(db_url, owner_conn.info.backend_pid)
        taker.commit()
        assert stream not in writing.get(timeout=10).written
        owner_conn.commit()
    rows = conn.execute(
        "SELECT start_offset, epoch, content FROM message_chunks WHERE message_id = %s",
        (stream.message_id,),
    ).fetchall()
    assert rows == [(0, 1, "first")]
