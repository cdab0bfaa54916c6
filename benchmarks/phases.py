"""The single-purpose measurements: WAL per answer, idle subscribers, takeover after SIGKILL."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import gevent
import gevent.lock

from benchmarks import load, wire
from benchmarks.context import NS, Bench, chatsvc_metrics, counters, create_conversations, delta
from benchmarks.meter import rss_bytes
from benchmarks.services import Database

# --- WAL -----------------------------------------------------------------------------


def _follow_to_done(base: str, token: str, message_id: str, timeout: float) -> dict[str, Any]:
    path = f"/api/messages/{message_id}/stream"
    auth = {"Authorization": f"Bearer {token}"}
    with wire.open_request(base, "GET", path, headers=auth, timeout=timeout) as response:
        parser = wire.SseParser()
        while True:
            _, data = response.read_some()
            if not data and response.finished:
                raise wire.HttpError("message stream ended before done")
            for event in parser.feed(data):
                if event.event == "done":
                    return dict(json.loads(event.data))


def wal(bench: Bench) -> dict[str, Any]:
    """WAL per content byte of one answer of each shape, next to rewriting the text per chunk."""
    p = bench.params
    with bench.db.connect() as conn:
        conn.execute("VACUUM (ANALYZE)")  # so that autovacuum has nothing to write meanwhile
        conn.execute("DROP TABLE IF EXISTS bench_naive")
        conn.execute(
            "CREATE TABLE bench_naive (id int PRIMARY KEY, content text NOT NULL)"
            " WITH (autovacuum_enabled = false, toast.autovacuum_enabled = false)"
        )
    _wal_answer(bench, 10, 200, 0.01)  # warms up the pages the answers touch; not counted
    shapes = []
    for chunks, size, delay, repeats in p.wal_shapes:
        runs = [_wal_answer(bench, chunks, size, delay) for _ in range(repeats)]
        text = _content(bench.db, runs[-1]["id"])
        naive = _naive(bench.db, [text[i : i + size] for i in range(0, len(text), size)])
        content_bytes = len(text.encode())
        shapes.append(
            {
                "chunks": chunks,
                "chunk_chars": size,
                "delay_s": delay,
                "content_bytes": content_bytes,
                "wal_bytes": [r["wal"] for r in runs],
                "wal_per_byte": round(statistics.median(r["wal"] for r in runs) / content_bytes, 2),
                "transactions": [r["xid"] for r in runs],
                "full_page_images": [r["fpi"] for r in runs],
                "naive_wal_bytes": naive["wal"],
                "naive_wal_per_byte": round(naive["wal"] / content_bytes, 2),
                "naive_full_page_images": naive["fpi"],
            }
        )
    with bench.db.connect() as conn:
        conn.execute("DROP TABLE bench_naive")
    return {"shapes": shapes}


def _wal_answer(bench: Bench, chunks: int, size: int, delay: float) -> dict[str, Any]:
    """One answer generated on A and followed on B, alone: the database counters around it."""
    a, b = bench.chatsvc
    conversation = create_conversations(bench, 1)[0]
    content = load.prompt(chunks, size, delay, bench.seed("w"), stamp=False)
    before = counters(bench.db)
    sent = wire.call(
        a.base,
        "POST",
        f"/api/conversations/{conversation}/messages",
        token=bench.token,
        body={"content": content},
    )
    message_id = sent["assistant_message"]["id"]
    done = _follow_to_done(b.base, bench.token, message_id, chunks * delay + 60)
    return {**delta(before, counters(bench.db)), "done": done, "id": message_id}


def _content(db: Database, message_id: str) -> str:
    with db.connect() as conn:
        row = conn.execute("SELECT content FROM messages WHERE id = %s", (message_id,)).fetchone()
    assert row is not None
    return str(row[0])


def _naive(db: Database, chunks: list[str]) -> dict[str, int]:
    """The naive strategy: every chunk rewrites the whole text so far, one commit each."""
    with db.connect() as conn:
        conn.execute("INSERT INTO bench_naive VALUES (1, '')")
        before = counters(db)
        for chunk in chunks:
            conn.execute("UPDATE bench_naive SET content = content || %s WHERE id = 1", (chunk,))
        after = counters(db)
        conn.execute("DELETE FROM bench_naive")
    return delta(before, after)


# --- idle subscribers ------------------------------------------------------------------


def subscribers(bench: Bench) -> dict[str, Any]:
    """Hold N conversation streams on one worker, check they live through heartbeats, and that
    an answer sent then reaches all the followers of its conversation."""
    p = bench.params
    a, b = bench.chatsvc
    conversations = create_conversations(bench, p.subscriber_conversations)
    worker = b.workers()[0]
    rss_before = rss_bytes(worker)
    held = [load.Held() for _ in range(p.subscribers)]
    samples = load.Samples()
    gate = gevent.lock.Semaphore(100)
    started = time.monotonic()
    greenlets = [
        gevent.spawn(
            load.hold_subscriber,
            b.base,
            bench.token,
            conversations[i % len(conversations)],
            held=h,
            gate=gate,
            samples=samples,
            timeout=60.0,
        )
        for i, h in enumerate(held)
    ]
    try:
        deadline = started + 30 + p.subscribers / 50
        while time.monotonic() < deadline and any(h.open and not h.connected for h in held):
            time.sleep(0.2)
        open_s = time.monotonic() - started
        connected = sum(h.connected for h in held)
        time.sleep(p.heartbeat_s * 1.5 + 0.5)  # at least one heartbeat each
        alive = [h for h in held if h.open and h.connected and h.pings >= 1]
        server_count = chatsvc_metrics([b]).get("chatsvc_subscribers")
        rss_after = rss_bytes(worker)
        sample = [h for i, h in enumerate(held) if i % len(conversations) == 0]
        content = load.prompt(20, p.chunk_chars, 0.02, bench.seed("s"))
        sent_at = time.monotonic()
        wire.call(
            a.base,
            "POST",
            f"/api/conversations/{conversations[0]}/messages",
            token=bench.token,
            body={"content": content},
        )
        while time.monotonic() - sent_at < 30 and any(h.open and not h.done for h in sample):
            time.sleep(0.1)
        reached = sum(1 for h in sample if h.done)
    finally:
        gevent.killall(greenlets, block=True, timeout=10)
    errors = sorted({h.error for h in held if h.error})[:3]
    return {
        "requested": p.subscribers,
        "connected": connected,
        "held": len(alive),
        "server_subscribers": server_count,
        "open_s": round(open_s, 1),
        "rss_mb": round(rss_after / 2**20, 1),
        "kb_per_subscriber": round((rss_after - rss_before) / 1024 / max(connected, 1), 1),
        "sample": len(sample),
        "reached": reached,
        "fanout_p50_ms": samples.summary()["p50_ms"],
        "fanout_p99_ms": samples.summary()["p99_ms"],
        "errors": errors,
    }


# --- takeover ----------------------------------------------------------------------------


def takeover(bench: Bench) -> dict[str, Any]:
    """SIGKILL the instance generating an answer; time until a follower on the other sees new
    text. Restarts the killed instance between trials."""
    trials = []
    for trial in range(bench.params.takeover_trials):
        if trial > 0:
            bench.chatsvc[0] = bench.restart(0)
        limit = bench.params.lease_s + 30
        try:
            with gevent.Timeout(limit, AssertionError(f"no new text within {limit:g} s")):
                trials.append(_one_takeover(bench))
        except Exception as exc:  # one failed trial is a result ("n/a"), not a failed run
            trials.append({"status_event_s": None, "new_text_s": None, "error": str(exc)})
    text_s = [t["new_text_s"] for t in trials if t["new_text_s"] is not None]
    return {
        "lease_s": bench.params.lease_s,
        "trials": trials,
        "median_s": round(statistics.median(text_s), 2) if text_s else None,
        "max_s": round(max(text_s), 2) if len(text_s) == len(trials) else None,
    }


EPOCH = "SELECT epoch FROM messages WHERE id = %s"
# Where the text written after the takeover starts: the new owner's first chunk.
NEW_TEXT_START = "SELECT min(start_offset) FROM message_chunks WHERE message_id = %s AND epoch > %s"


def _one_takeover(bench: Bench) -> dict[str, Any]:
    a, b = bench.chatsvc
    limit = bench.params.lease_s + 10
    conversation = create_conversations(bench, 1)[0]
    auth = {"Authorization": f"Bearer {bench.token}"}
    path = f"/api/conversations/{conversation}/stream"
    seen: list[tuple[int, wire.Event]] = []
    response = wire.open_request(b.base, "GET", path, headers=auth, timeout=limit)
    reader = gevent.spawn(_record, response, seen)
    try:
        while not any(e.retry for _, e in seen):
            time.sleep(0.01)
        content = load.prompt(3000, 8, 0.01, bench.seed("t"), stamp=False)
        sent = wire.call(
            a.base,
            "POST",
            f"/api/conversations/{conversation}/messages",
            token=bench.token,
            body={"content": content},
        )
        message_id = sent["assistant_message"]["id"]
        while sum(e.event == "delta" for _, e in seen) < 20:
            _check(reader)
            time.sleep(0.01)
        with bench.db.connect() as conn:
            row = conn.execute(EPOCH, (message_id,)).fetchone()
            assert row is not None
            epoch = row[0]
            killed = time.monotonic_ns()
            a.kill()
            status_ns = None
            new_text_ns = None
            while time.monotonic_ns() - killed < limit * NS and new_text_ns is None:
                _check(reader)
                time.sleep(0.05)
                status_ns = next((t for t, e in seen if e.event == "status"), None)
                row = conn.execute(NEW_TEXT_START, (message_id, epoch)).fetchone()
                if row is not None and row[0] is not None:
                    new_text_ns = _first_delta_reaching(seen, row[0])
        wire.call(b.base, "POST", f"/api/messages/{message_id}/cancel", token=bench.token)
    finally:
        reader.kill(block=True, timeout=5)
        response.close()
    return {
        "status_event_s": None if status_ns is None else round((status_ns - killed) / NS, 3),
        "new_text_s": None if new_text_ns is None else round((new_text_ns - killed) / NS, 3),
    }


def _record(response: wire.Response, seen: list[tuple[int, wire.Event]]) -> None:
    parser = wire.SseParser()
    while not response.finished:
        received_ns, data = response.read_some()
        seen += [(received_ns, event) for event in parser.feed(data)]


def _check(reader: gevent.Greenlet) -> None:
    if reader.dead and reader.exception is not None:
        raise reader.exception


def _first_delta_reaching(seen: list[tuple[int, wire.Event]], offset: int) -> int | None:
    """When the first delta with text at or after `offset` arrived."""
    for received_ns, event in seen:
        if event.event == "delta":
            data = json.loads(event.data)
            if data["offset"] + len(data["text"]) > offset:
                return received_ns
    return None
