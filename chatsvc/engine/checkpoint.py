"""Generating answers: LLM deltas → group-committed checkpoints → NOTIFY.

Each answer this process owns is a `Stream`, fed by a greenlet that reads the LLM.
One `Checkpointer` greenlet per process commits the new text of every stream it
owns: as soon as there is any and no commit is in flight (so an idle database
gets each chunk at once), and otherwise in one transaction for everything that
arrived meanwhile (group commit). `CHATSVC_CHECKPOINT_MIN_MS`, when set, holds
back a stream's next checkpoint until that long after its last one: fewer,
larger chunk rows and less WAL, for that much more latency. A transaction
appends the new text of each stream as one chunk row, renews its lease, and
sends one NOTIFY for all of them; the text becomes visible only after that
commit.

Every write is conditional on the stream's epoch and committed length, so a
process that lost its lease cannot write another byte: its statements match no
row, and its answer greenlet is stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import gevent
import gevent.event
import psycopg
from psycopg import Connection

from chatsvc.config import Settings
from chatsvc.engine import db, events
from chatsvc.engine.background import Background
from chatsvc.engine.stream import FINAL, Cancelled, Ending, State, Stream
from chatsvc.errors import Fenced

log = logging.getLogger(__name__)


@dataclass
class Stats:
    """Counters for /metrics and the benchmark."""

    transactions: int = 0
    checkpoints: int = 0
    chars: int = 0
    finished: int = 0
    fenced: int = 0
    commit_seconds: float = 0.0
    errors: int = 0


def due(
    streams: Iterable[Stream], now: float, renew_every: float, min_interval: float
) -> tuple[list[Stream], float]:
    """The streams the next commit must include, and how many seconds until another is due."""
    batch = []
    wait = renew_every
    for s in streams:
        if s.state in (State.ENDING, State.RELEASING) or now - s.renewed_at >= renew_every:
            batch.append(s)
        elif s.pending:
            ready = s.checkpointed_at + min_interval - now
            if ready <= 0:
                batch.append(s)
            else:
                wait = min(wait, ready)
        else:
            wait = min(wait, s.renewed_at + renew_every - now)
    return batch, max(wait, 0.001)


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

# Handing streams over on shutdown: no owner, lease expired now, so any live
# process takes them over at once (see leases.TAKE_OVER).
RELEASE = """
UPDATE messages m SET owner = NULL, lease_expires_at = now()
FROM unnest(%(ids)s::uuid[], %(epochs)s::int[]) AS b(id, epoch)
WHERE m.id = b.id AND m.epoch = b.epoch AND m.status = 'streaming'
RETURNING m.id
"""

RECONCILE = "SELECT id, epoch, status, content_length FROM messages WHERE id = ANY(%s)"


class Checkpointer(Background):
    """The process's one committer: group-commits the text of every stream it owns."""

    def __init__(self, url: str, settings: Settings, publish: Callable[[list[events.Event]], None]):
        super().__init__()
        self.url = url
        self.settings = settings
        self.publish = publish
        self.streams: dict[UUID, Stream] = {}
        self.stats = Stats()
        self.backend_pids: set[int] = set()
        self.renew_every = settings.lease_s / 3
        self.min_interval = settings.checkpoint_min_ms / 1000
        self._conn: Connection[Any] | None = None
        self._uncertain: list[Stream] = []

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the in-flight commit (and once no stream is left)."""
        super().stop(timeout)
        self._drop_connection()

    def release_all(self, timeout: float) -> int:
        """Hand every stream over: stop its greenlet, commit its text, clear owner and lease."""
        streams = list(self.streams.values())
        # One already ending just finishes.
        releasing = [s for s in streams if s.state in (State.RUNNING, State.CANCELLING)]
        for stream in releasing:
            stream.move(State.RELEASING)
            if stream.worker is not None:
                stream.worker.kill(Fenced, block=False)
        self._wake.set()
        gevent.wait([s.ended for s in streams], timeout=timeout)
        return len(releasing)

    def adopt(self, stream: Stream) -> None:
        """Start checkpointing a stream this process now owns."""
        self.streams[stream.message_id] = stream

    def append(self, stream: Stream, text: str) -> None:
        """Queue text for the next checkpoint (no I/O: generators never wait on the database)."""
        if stream.accepts_text:
            stream.pending.append(text)
            self._wake.set()

    def end(self, stream: Stream, ending: Ending) -> bool:
        """Commit the ending with all remaining text; False if the stream was lost meanwhile."""
        if stream.handed_off:
            return False  # whoever owns it now ends it
        stream.move(State.ENDING, ending)
        self._wake.set()
        while True:
            try:
                return bool(stream.ended.get())
            except Cancelled:
                continue  # a cancel that arrived as the answer was ending changes nothing

    def request_cancel(self, message_id: UUID) -> None:
        """Stop the answer greenlet of a stream this process owns (called on a cancel event)."""
        stream = self.streams.get(message_id)
        if stream is None or stream.state is not State.RUNNING:
            return
        stream.move(State.CANCELLING)
        if stream.worker is not None:
            stream.worker.kill(Cancelled, block=False)

    # --- the loop -------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.05
        idle = self.renew_every  # how long to sleep when nothing wakes the loop
        while not (self._stopped and not self.streams):
            self._wake.wait(timeout=idle)
            self._wake.clear()
            try:
                idle = self.checkpoint_once()
                backoff = 0.05
            except psycopg.Error as exc:
                self.stats.errors += 1
                log.warning("checkpoint failed (%s); retrying in %.2fs", exc, backoff)
                self._drop_connection()
                gevent.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                self._wake.set()
            except Exception:
                self.stats.errors += 1
                log.exception("checkpointer error")
                gevent.sleep(backoff)
                self._wake.set()
            if self._stopped and not self.streams:
                return

    def checkpoint_once(self) -> float:
        """One turn of the loop, in this greenlet: commit what is due; seconds until more is."""
        conn = self._connection()
        if self._uncertain:
            self._reconcile(conn)
        batch, wait = due(
            self.streams.values(), time.monotonic(), self.renew_every, self.min_interval
        )
        if batch:
            self._commit(conn, batch)
        return wait

    def _connection(self) -> Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.url, autocommit=True, purpose="chatsvc-checkpoint")
            # Only the live connection's pid: Postgres may reuse an old one.
            self.backend_pids = {self._conn.info.backend_pid}
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def _commit(self, conn: Connection[Any], batch: list[Stream]) -> None:
        started = time.monotonic()
        ending = [s for s in batch if s.state is State.ENDING]
        ongoing = sorted((s for s in batch if s not in ending), key=lambda s: s.message_id)
        texts = {s: "".join(s.pending) for s in batch}
        counts = {s: len(s.pending) for s in batch}
        outbox: list[events.Event] = []
        self._uncertain = batch
        if ending or any(s.state is State.RELEASING for s in ongoing):
            with conn.transaction():
                written, cancels = self._checkpoint(conn, ongoing, texts, outbox)
                releasing = [s for s in ongoing if s.state is State.RELEASING and s in written]
                released = self._release(conn, releasing)
                more: list[events.Event] = [events.LeasesReleased()] if released else []
                finished = {s for s in ending if self._finish(conn, s, texts[s], more)}
                events.send(conn, more)
                outbox += more
        else:  # the common case: one statement, one round trip, its own transaction
            written, cancels = self._checkpoint(conn, ongoing, texts, outbox)
            released, finished = set(), set()
        self._uncertain = []
        self.stats.transactions += 1
        self.stats.commit_seconds += time.monotonic() - started
        for stream in ongoing:
            if stream in written:
                del stream.pending[: counts[stream]]
                stream.committed += len(texts[stream])
                stream.renewed_at = started
                if texts[stream]:
                    stream.checkpointed_at = started
                self.stats.checkpoints += 1 if texts[stream] else 0
                self.stats.chars += len(texts[stream])
            else:
                self._lose(stream)
            if stream in released:
                self.streams.pop(stream.message_id, None)
                stream.move(State.RELEASED)
        for stream in ending:
            self.streams.pop(stream.message_id, None)
            if stream in finished:
                stream.committed += len(texts[stream])
                self.stats.finished += 1
                stream.move(State.ENDED)
            else:
                self._lose(stream)
        self.publish(outbox)
        for message_id in cancels:
            self.request_cancel(message_id)

    def _checkpoint(
        self,
        conn: Connection[Any],
        streams: list[Stream],
        texts: dict[Stream, str],
        outbox: list[events.Event],
    ) -> tuple[set[Stream], list[UUID]]:
        if not streams:
            return set(), []
        deltas = [s.delta(texts[s]) if texts[s] else None for s in streams]
        items = [None if delta is None else events.item(delta) for delta in deltas]
        params = {
            "ids": [s.message_id for s in streams],
            "epochs": [s.epoch for s in streams],
            "starts": [s.committed for s in streams],
            "texts": [texts[s] for s in streams],
            "items": items,
            "payloads": events.pack(items),
            "lease": self.settings.lease_s,
            "channel": events.CHANNEL,
        }
        rows = conn.execute(CHECKPOINT, params).fetchall()
        ok = {row[0] for row in rows}
        cancels = [row[0] for row in rows if row[1]]
        written = {s for s in streams if s.message_id in ok}
        outbox += [d for s, d in zip(streams, deltas, strict=True) if d and s in written]
        return written, cancels

    @staticmethod
    def _release(conn: Connection[Any], streams: list[Stream]) -> set[Stream]:
        if not streams:
            return set()
        params = {"ids": [s.message_id for s in streams], "epochs": [s.epoch for s in streams]}
        done = {row[0] for row in conn.execute(RELEASE, params)}
        return {s for s in streams if s.message_id in done}

    def _finish(
        self, conn: Connection[Any], stream: Stream, tail: str, outbox: list[events.Event]
    ) -> bool:
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
            return False
        if tail:
            outbox.append(stream.delta(tail))
        usage, project_id = row
        outbox.append(
            events.Finished(
                stream.conversation_id,
                stream.message_id,
                ending.status,
                length,
                usage,
                ending.error,
            )
        )
        if project_id is not None:
            outbox.append(
                events.project_event(
                    project_id,
                    "stream.finished",
                    conversation_id=stream.conversation_id,
                    message_id=stream.message_id,
                    status=ending.status,
                    content_length=length,
                )
            )
        return True

    def _lose(self, stream: Stream) -> None:
        """The database says we no longer own this stream: stop it, write nothing more."""
        self.streams.pop(stream.message_id, None)
        if stream.state in FINAL:
            return
        # An ending stream's greenlet waits in end(), which the move to LOST wakes.
        stop_worker = stream.state is not State.ENDING
        stream.move(State.LOST)
        stream.pending.clear()
        self.stats.fenced += 1
        log.warning(
            "lost stream %s (epoch %d): stopping its answer", stream.message_id, stream.epoch
        )
        if stop_worker and stream.worker is not None:
            stream.worker.kill(Fenced, block=False)

    def _reconcile(self, conn: Connection[Any]) -> None:
        """After a failed commit, learn from the database whether it happened after all."""
        streams, self._uncertain = self._uncertain, []
        rows = conn.execute(RECONCILE, ([s.message_id for s in streams],)).fetchall()
        state = {row[0]: row[1:] for row in rows}
        for stream in streams:
            epoch, status, length = state.get(stream.message_id, (None, None, None))
            if epoch != stream.epoch:
                self._lose(stream)
            elif status != "streaming" and stream.state is State.ENDING:
                # The ending did commit (only we could end it at this epoch).
                self.streams.pop(stream.message_id, None)
                stream.committed = length
                stream.move(State.ENDED)
            elif status != "streaming":
                self._lose(stream)  # not ours to end: written by hand, no longer ours to write
            elif length != stream.committed:
                # The checkpoint committed, and its NOTIFY went out with it; tell
                # local subscribers, who read the text from the database.
                text = "".join(stream.pending)
                taken = length - stream.committed
                consumed = 0
                while stream.pending and consumed + len(stream.pending[0]) <= taken:
                    consumed += len(stream.pending.pop(0))
                if consumed != taken:
                    log.error(
                        "stream %s: committed length %d does not match pending text",
                        stream.message_id,
                        length,
                    )
                    self._lose(stream)
                    continue
                self.publish([stream.delta(text[:taken])])
                stream.committed = length
