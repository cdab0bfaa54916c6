"""The checkpointer: LLM deltas → group-committed checkpoints → NOTIFY.

Each answer this process owns is a `Stream` (engine/stream.py), fed by a greenlet
that reads the LLM (engine/answers.py).
One `Checkpointer` greenlet per process commits the new text (and reasoning,
layout and tool-call ledger rows) of every stream it owns: as soon as there is
any and no commit is in flight, and otherwise in one transaction for everything
that arrived meanwhile (group commit). The first text of an answer, and of each
of its parts, is committed at once; later text is coalesced:
`CHATSVC_CHECKPOINT_MIN_MS` holds a stream's next checkpoint until that long
after its last one (fewer, larger chunks, fewer transactions, less WAL), and
text that has waited half as long rides along with any commit (see `due`). A transaction
appends the new text and reasoning of all its streams as one chunk_batches row,
renews the leases that are due (every lease/3: text alone leaves the row alone),
and notifies all of them in as few payloads as fit; the text becomes visible
only after that commit. A stream whose answer records tool
calls or meters a model call gets a transaction of several statements instead
(the checkpoint, then its ledger rows and llm_calls rows), which the answer's
greenlet can wait for with `flush`. The statements are in engine/writes.py.

Every write is conditional on the stream's epoch, and fenced by the owner's
advisory fence (see writes.CHECKPOINT), so a process that lost its lease cannot
write another byte: its statements match no row, and its answer greenlet is
stopped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import gevent
import gevent.event
import psycopg
from psycopg import Connection

from chatsvc import metrics
from chatsvc.config import Settings
from chatsvc.engine import db, events, ledger, writes
from chatsvc.engine.background import Background
from chatsvc.engine.stream import FINAL, Cancelled, Ending, State, Stream, Take
from chatsvc.errors import Fenced

log = logging.getLogger(__name__)


@dataclass
class Stats:
    """This checkpointer's own counters (/metrics has the process's, chatsvc/metrics.py)."""

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
    """The streams the next commit must include, and how many seconds until another is due.

    A stream's new text is due `min_interval` after its last checkpoint (at once
    for the first text of an answer or of a part: `Stream.checkpointed_at` is 0
    then). When a commit is due anyway, text that has waited at least half the
    interval rides along: streams fall into step and share transactions instead
    of each committing on its own phase.
    """
    batch = []
    riders = []
    wait = renew_every
    for s in streams:
        if (
            s.state in (State.ENDING, State.RELEASING)
            or s.waiters  # a greenlet waits for this commit (a tool call about to be sent)
            or now - s.renewed_at >= renew_every
        ):
            batch.append(s)
        elif s.has_pending:
            ready = s.checkpointed_at + min_interval - now
            if ready <= 0:
                batch.append(s)
            else:
                wait = min(wait, ready)
                if ready <= min_interval / 2:
                    riders.append(s)
        else:
            wait = min(wait, s.renewed_at + renew_every - now)
    if batch:
        batch += riders
    return batch, max(wait, 0.001)


class Checkpointer(Background):
    """The process's one committer: group-commits the text of every stream it owns."""

    def __init__(
        self,
        url: str,
        settings: Settings,
        publish: Callable[[list[events.Event]], None],
        owner: str = "",
    ):
        super().__init__()
        self.url = url
        self.owner = owner  # the owner its answers' rows name (the fence's key)
        self.settings = settings
        self.publish = publish
        self.streams: dict[UUID, Stream] = {}
        self.stats = Stats()
        self.backend_pids: set[int] = set()
        self.renew_every = settings.lease_s / 3
        self.min_interval = settings.coalesce_ms / 1000
        self._conn: Connection[Any] | None = None
        self._uncertain: dict[Stream, Take] = {}
        # When the loop will wake by itself (infinity while it is not waiting): text due
        # later than that need not wake it.
        self._asleep_until = math.inf

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
        if stream.message_id not in self.streams:
            metrics.STREAMS_OWNED.inc()
        self.streams[stream.message_id] = stream

    def _drop(self, stream: Stream) -> None:
        """Stop checkpointing a stream (it ended, was released or lost)."""
        if self.streams.pop(stream.message_id, None) is not None:
            metrics.STREAMS_OWNED.dec()

    def append(self, stream: Stream, text: str) -> None:
        """Queue text for the next checkpoint (no I/O: generators never wait on the database)."""
        if stream.accepts_text:
            stream.add_text(text)
            self._nudge(stream)

    def append_reasoning(self, stream: Stream, text: str) -> None:
        """Queue reasoning for the next checkpoint, as `append` does text."""
        if stream.accepts_text:
            stream.add_reasoning(text)
            self._nudge(stream)

    def _nudge(self, stream: Stream) -> None:
        """Wake the loop if the stream's new text is due before the loop wakes anyway: the
        first text of a part, or text after a pause. Coalesced text is due when the loop
        already plans to wake, and waking it for every token cost a turn of the loop each."""
        if stream.checkpointed_at + self.min_interval < self._asleep_until:
            self._wake.set()

    def changed(self, stream: Stream) -> None:
        """The stream's layout or ledger changed: checkpoint it (no I/O here either)."""
        self._wake.set()

    def flush(self, stream: Stream) -> None:
        """Wait until everything queued for the stream so far is committed (Fenced if lost)."""
        if not stream.accepts_text:
            raise Fenced()
        waiter: gevent.event.AsyncResult = gevent.event.AsyncResult()
        stream.waiters.append(waiter)
        self._wake.set()
        waiter.get()

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
            self._asleep_until = time.monotonic() + idle
            self._wake.wait(timeout=idle)
            self._asleep_until = math.inf
            self._wake.clear()
            try:
                idle = self.checkpoint_once()
                backoff = 0.05
            except psycopg.Error as exc:
                self.stats.errors += 1
                metrics.CHECKPOINT_ERRORS.inc()
                log.warning("checkpoint failed (%s); retrying in %.2fs", exc, backoff)
                self._drop_connection()
                gevent.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                self._wake.set()
            except Exception:
                self.stats.errors += 1
                metrics.CHECKPOINT_ERRORS.inc()
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
            writes.prepare(self._conn)
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
        # An ending stream's last text goes through the checkpoint statement too,
        # so that the chunks hold all of it when FINISH has to read them back.
        streams = sorted(batch, key=lambda s: s.message_id)
        takes = {s: s.take() for s in streams}
        renew = {s for s in streams if self._renews(s, takes[s], started)}
        self._uncertain = {s: takes[s] for s in streams}
        # Text alone (the common case) is one call that commits on its own: one round
        # trip. Tool calls, usage, releases and endings add statements, and then all of
        # them are one transaction. Not pipelined: under gevent, psycopg's pipeline
        # polls the hub ~19 times per commit where four plain round trips poll it 4
        # times; at rest a commit took 0.97 ms pipelined and 0.65 plain.
        alone = not ending and all(
            s.state is not State.RELEASING and not (takes[s].writes or takes[s].meters)
            for s in streams
        )
        with contextlib.nullcontext() if alone else conn.transaction():
            done = writes.checkpoint(
                conn, streams, takes, self.settings.lease_s, owner=self.owner, renew=renew
            )
            for stream in streams:
                if stream in done.written:
                    ledger.write(conn, stream.message_id, stream.epoch, takes[stream].writes)
                    writes.meter(conn, stream, takes[stream].meters)
            releasing = [s for s in streams if s in done.written and s.state is State.RELEASING]
            finishing = [s for s in ending if s in done.written]
            released, finished, more = self._hand_over(conn, releasing, finishing, takes)
        self._uncertain = {}
        committed = time.monotonic()
        self.stats.transactions += 1
        self.stats.commit_seconds += committed - started
        metrics.CHECKPOINT_TRANSACTIONS.inc()
        metrics.CHECKPOINT_SECONDS.observe(committed - started)
        checkpoints, chars = self.stats.checkpoints, self.stats.chars
        for stream in streams:
            if stream not in done.written or (stream in ending and stream not in finished):
                self._lose(stream)
                continue
            take = takes[stream]
            stream.taken(take)
            if stream in renew:
                stream.renewed_at = started
            if take.text or take.reasoning:
                stream.checkpointed_at = started
                self.stats.checkpoints += 1
            self.stats.chars += len(take.text) + len(take.reasoning)
            _count_take(stream, take, committed)
            if stream in released:
                self._drop(stream)
                stream.move(State.RELEASED)
            elif stream in finished:
                self._drop(stream)
                self.stats.finished += 1
                stream.move(State.ENDED)
                _ended(stream, committed)
        # Once per transaction, not per stream: each costs a write to the metrics file.
        metrics.CHECKPOINTS.inc(self.stats.checkpoints - checkpoints)
        metrics.CHECKPOINT_CHARS.inc(self.stats.chars - chars)
        self.publish(done.deltas + more)
        for message_id in done.cancels:
            self.request_cancel(message_id)

    def _renews(self, stream: Stream, take: Take, now: float) -> bool:
        """Whether this commit writes the stream's row: its lease is due for renewal, or its
        layout, tool version or step changed, or it ends or is handed over. Text alone
        writes only its chunk."""
        return (
            now - stream.renewed_at >= self.renew_every
            or stream.state in (State.ENDING, State.RELEASING)
            or take.layout is not None
            or take.step is not None
            or take.version != stream.committed_version
            or bool(take.writes or take.meters)
        )

    @staticmethod
    def _hand_over(
        conn: Connection[Any],
        releasing: list[Stream],
        ending: list[Stream],
        takes: dict[Stream, Take],
    ) -> tuple[set[Stream], set[Stream], list[events.Event]]:
        """Release and finish streams in the caller's transaction, notifying what it did."""
        released = writes.release(conn, releasing)
        announced: list[events.Event] = [events.LeasesReleased()] if released else []
        finished = set()
        for stream in ending:
            # A call still running when its answer ends will never have its outcome.
            ledger.abandon(conn, stream.message_id, stream.epoch, ledger.ENDED_RUNNING)
            # FINISH gets the text this process wrote, or (a taken-over or continued
            # answer) checks that the chunks end where the checkpoint just wrote.
            take = takes[stream]
            finish = writes.finish(
                conn,
                stream,
                stream.committed + len(take.text),
                None
                if stream.committed_text is None
                else "".join(stream.committed_text) + take.text,
                stream.committed_reasoning + len(take.reasoning),
            )
            if finish is not None:
                finished.add(stream)
                announced += finish
        events.send(conn, announced)
        return released, finished, announced

    def _lose(self, stream: Stream) -> None:
        """The database says we no longer own this stream: stop it, write nothing more."""
        self._drop(stream)
        if stream.state in FINAL:
            return
        # An ending stream's greenlet waits in end(), which the move to LOST wakes.
        stop_worker = stream.state is not State.ENDING
        stream.move(State.LOST)
        stream.drop_pending(Fenced())
        self.stats.fenced += 1
        metrics.STREAMS_FENCED.inc()
        log.warning(
            "lost stream %s (epoch %d): stopping its answer",
            stream.message_id,
            stream.epoch,
            extra={"message_id": str(stream.message_id)},
        )
        if stop_worker and stream.worker is not None:
            stream.worker.kill(Fenced, block=False)

    def _reconcile(self, conn: Connection[Any]) -> None:
        """After a failed commit, learn from the database whether it happened after all."""
        attempted, self._uncertain = self._uncertain, {}
        rows = writes.rows_now(conn, list(attempted))
        for stream, take in attempted.items():
            row = rows.get(stream.message_id)  # None: deleted
            if row is None or row.epoch != stream.epoch:
                self._lose(stream)
                continue
            if row.status != "streaming" and stream.state is State.ENDING:
                # The ending did commit (only we could end it at this epoch).
                self._drop(stream)
                stream.taken(take)
                stream.move(State.ENDED)
                _ended(stream, time.monotonic())
            elif row.status != "streaming":
                self._lose(stream)  # not ours to end: written by hand, no longer ours to write
            elif (row.content_length, row.reasoning_length, row.tool_version) == (
                stream.committed + len(take.text),
                stream.committed_reasoning + len(take.reasoning),
                take.version,
            ) and take.changes:
                # The checkpoint committed, and its NOTIFY went out with it; tell
                # local subscribers, who read what they miss from the database.
                stream.taken(take)
                self.publish(take.events)
            elif (row.content_length, row.reasoning_length) != (
                stream.committed,
                stream.committed_reasoning,
            ):
                log.error(
                    "stream %s: committed lengths do not match",
                    stream.message_id,
                    extra={"message_id": str(stream.message_id)},
                )
                self._lose(stream)


def _count_take(stream: Stream, take: Take, committed: float) -> None:
    """The metrics of what one commit wrote of a stream: its first text, its model calls."""
    if take.text and stream.sent_at is not None:
        # The first text of an answer a client just sent.
        metrics.FIRST_TEXT_SECONDS.observe(committed - stream.sent_at)
        stream.sent_at = None
    for meter in take.meters:
        metrics.MODEL_CALLS.inc()
        if meter.estimated:
            metrics.TOKENS_ESTIMATED.inc()
        for kind in ("prompt", "completion"):
            tokens = meter.usage.get(f"{kind}_tokens") or 0
            if tokens:
                metrics.TOKENS.labels(kind).inc(tokens)


def _ended(stream: Stream, at: float) -> None:
    """An answer's ending just committed: count it, and say so."""
    status = stream.ending.status if stream.ending is not None else "unknown"
    seconds = at - stream.began_at
    metrics.ANSWERS.labels(status).inc()
    metrics.ANSWER_SECONDS.labels(status).observe(seconds)
    log.info(
        "answer %s %s: %d chars in %.1f s",
        stream.message_id,
        status,
        stream.committed,
        seconds,
        extra={"message_id": str(stream.message_id)},
    )
