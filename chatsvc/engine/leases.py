"""Leases: any live process takes over answers whose owner is gone, with no coordinator.

An owner holds each streaming answer under a lease (`lease_expires_at`, renewed
every lease/3 by its checkpointer) and an `epoch` that fences its writes (with
the owner's advisory fence, see writes.CHECKPOINT). A `Reaper` in every
process claims orphans — rows whose lease expired, that were released by a
stopping process, or whose owner's database session is gone — with
`FOR UPDATE SKIP LOCKED`, so two processes never claim the same row. Claiming
increments the epoch, which stops the old owner from writing should it still be
alive, and then either resumes the generation from the committed text or ends the
answer `interrupted`, by policy.

A live owner is recognised by a session advisory lock its LISTEN connection holds
(`owner_lock_key`); when the process dies, Postgres drops the lock with the
connection, and a crashed owner's answers are taken over at once instead of
after the lease.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg import Connection
from psycopg.rows import class_row
from psycopg_pool import ConnectionPool

from chatsvc import metrics
from chatsvc.config import Settings
from chatsvc.engine import events, writes
from chatsvc.engine.answers import Answerer
from chatsvc.engine.background import Background
from chatsvc.engine.checkpoint import Checkpointer
from chatsvc.engine.parts import Entry, Layout
from chatsvc.engine.stream import Ending, State, Stream

log = logging.getLogger(__name__)

# The first key of the two-key advisory lock form: owners' locks live apart
# from any other advisory lock (such as the migration lock).
OWNER_LOCK_CLASS = 0x63737663  # 'csvc'


def owner_lock_key(owner: str) -> int:
    """The 32-bit advisory lock key of an owner id."""
    return int.from_bytes(hashlib.sha256(owner.encode()).digest()[:4], "big", signed=True)


@dataclass(frozen=True)
class Claim:
    """An orphan this process just took over."""

    id: UUID
    conversation_id: UUID
    user_id: UUID | None
    model: str | None
    epoch: int
    content_length: int
    resume_count: int
    reasoning_length: int
    tool_version: int
    step: int
    layout: list[Entry] | None

    def stream(self, default_model: str) -> Stream:
        """The stream of the claimed answer, its parts and counters restored as committed."""
        return Stream(
            message_id=self.id,
            conversation_id=self.conversation_id,
            user_id=self.user_id,
            model=self.model or default_model,
            epoch=self.epoch,
            committed=self.content_length,
            layout=Layout.restore(
                self.layout, self.content_length, self.reasoning_length, self.tool_version
            ),
            committed_reasoning=self.reasoning_length,
            committed_version=self.tool_version,
            committed_layout=copy.deepcopy(self.layout),
            step=self.step,
            committed_step=self.step,
        )


SELECT_OTHER_OWNERS = """
SELECT DISTINCT owner FROM messages
WHERE status = 'streaming' AND owner IS NOT NULL AND owner <> %s AND lease_expires_at > now()
"""
TRY_OWNER_LOCK = "SELECT pg_try_advisory_lock(%s, %s)"
UNLOCK_OWNER = "SELECT pg_advisory_unlock(%s, %s)"

# Before it claims, a takeover fences the owners of the orphans it may claim
# (writes.FENCE_CLASS): it waits for their checkpoints in flight, which write without
# locking the row, and holds back their later ones until it has committed (they
# then see the new epoch). Only the orphans of fenced owners are claimed; a
# released orphan (owner NULL) has no owner left to write.
# Orphans: lease expired (or released on shutdown: owner NULL, lease = now), or
# the owner's session is gone; never one of this process's own streams.
_ORPHAN = """status = 'streaming'
      AND (lease_expires_at <= now() OR owner IS NULL OR owner = ANY(%(dead)s))
      AND id <> ALL(%(mine)s)"""

FENCE_OWNERS = f"""
SELECT o.owner, pg_advisory_xact_lock(%(class)s, hashtext(o.owner)) FROM (
    SELECT DISTINCT owner FROM messages
    WHERE {_ORPHAN} AND owner IS NOT NULL
    ORDER BY owner
) o
"""

# The orphans of fenced owners (or of none). SKIP LOCKED: a row another process
# is claiming, or whose row its owner is writing this instant, is simply not
# ours to take. The model call the ended epoch was making is recorded here,
# estimated: the call of step `m.step`, unless a row says that call already
# ended (the owner metered it, and died while its tools ran) or that epoch's
# row is there.
TAKE_OVER = f"""
WITH orphans AS (
    SELECT id FROM messages
    WHERE {_ORPHAN}
      AND (owner IS NULL OR owner = ANY(%(fenced)s))
    ORDER BY lease_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE messages m
    SET epoch = m.epoch + 1,
        owner = %(owner)s,
        resume_count = m.resume_count + 1,
        lease_expires_at = now() + %(lease)s * interval '1 second'
    FROM orphans WHERE m.id = orphans.id
    RETURNING m.id, m.conversation_id, m.user_id, m.model, m.epoch,
              message_committed(m, 'text') AS content_length, m.resume_count,
              message_committed(m, 'reasoning') AS reasoning_length, m.tool_version, m.step,
              m.layout, m.batches_from
), calls AS (
    INSERT INTO llm_calls (message_id, user_id, epoch, step, model, prompt_tokens,
                           completion_tokens, estimated)
    SELECT c.id, c.user_id, c.epoch - 1, c.step, coalesce(c.model, ''),
           ((SELECT coalesce(sum(char_length(p.content)), 0)
             FROM message_branch(c.id) b  -- each by its key: see messages._BRANCH
             CROSS JOIN LATERAL (SELECT p.content FROM messages p WHERE p.id = b.id OFFSET 0) p
             WHERE b.depth > 0) / 4)::int,
           ((SELECT coalesce(sum(char_length(k.content)), 0) FROM message_chunks k
             WHERE k.batch_id >= coalesce(c.batches_from, 0)
               AND k.message_id = c.id AND k.epoch = c.epoch - 1) / 4)::int,
           true
    FROM claimed c
    WHERE NOT EXISTS (SELECT 1 FROM llm_calls l
                      WHERE l.message_id = c.id AND l.step = c.step
                        AND (l.epoch = c.epoch - 1 OR NOT l.estimated))
)
SELECT id, conversation_id, user_id, model, epoch, content_length, resume_count,
       reasoning_length, tool_version, step, layout
FROM claimed
"""


# Checkpoints share chunk_batches rows, so no answer deletes its own text: this
# deletes the batches older than every streaming answer's first (migration 0006).
SWEEP_CHUNKS = "SELECT chatsvc_sweep_chunks()"

# Metering appends to usage_pending, so that no checkpoint writes a user's row;
# this adds what is pending to the users' totals (migration 0007).
COUNT_USAGE = "SELECT chatsvc_count_usage()"


class Reaper(Background):
    """Takes over orphaned answers: on a timer, when woken by a release, and at startup;
    and on the same timer deletes the chunk batches nothing reads any more and adds the
    pending tokens to the users' totals."""

    def __init__(
        self,
        settings: Settings,
        pool: ConnectionPool,
        checkpointer: Checkpointer,
        answerer: Answerer,
        owner: str,
        *,
        listening_since: Callable[[], float | None],
        busy: Callable[[], bool],
    ) -> None:
        super().__init__()
        self.settings = settings
        self.pool = pool
        self.checkpointer = checkpointer
        self.answerer = answerer
        self.owner = owner
        self.listening_since = listening_since
        self.busy = busy
        # Often enough that an expired lease is noticed within about a second.
        self.interval = min(1.0, settings.lease_s / 3)
        self.taken = 0

    def _run(self) -> None:
        while not self._stopped:
            try:
                while not self._stopped and self.sweep() > 0:
                    pass  # more orphans may be waiting
                self.sweep_chunks()
                self.count_usage()
            except psycopg.Error as exc:
                log.warning("orphan sweep failed: %s", exc)
            except Exception:
                log.exception("orphan sweep failed")
            metrics.POOL_CONNECTIONS.set(self.pool.get_stats().get("pool_size", 0))
            # Jitter keeps processes that started together from sweeping in step.
            self._wake.wait(timeout=self.interval * random.uniform(0.8, 1.2))
            self._wake.clear()

    def sweep(self, limit: int = 20) -> int:
        """Claim up to `limit` orphans and resume or interrupt each; returns how many. A
        worker too busy to start answers takes none: they wait for a worker with room."""
        if self.busy():
            return 0
        with self.pool.connection() as conn:
            dead = self._dead_owners(conn)
            params: dict[str, Any] = {
                "dead": dead,
                "mine": list(self.checkpointer.streams),
                "limit": limit,
                "owner": self.owner,
                "lease": self.settings.lease_s,
                "class": writes.FENCE_CLASS,
            }
            fenced = conn.execute(FENCE_OWNERS, params).fetchall()
            params["fenced"] = [owner for owner, _ in fenced]
            claims = conn.cursor(row_factory=class_row(Claim)).execute(TAKE_OVER, params).fetchall()
            resumed = [c for c in claims if self._resumes(c)]
            events.send(
                conn,
                [
                    events.StatusChanged(c.conversation_id, c.id, "streaming", c.epoch, True)
                    for c in resumed
                ],
            )
        for claim in claims:
            self.taken += 1
            stream = claim.stream(self.settings.model)
            about = {"message_id": str(claim.id)}
            if claim in resumed:
                metrics.TAKEOVERS.labels("resume").inc()
                log.info(
                    "resuming %s at offset %d (epoch %d)",
                    claim.id,
                    claim.content_length,
                    claim.epoch,
                    extra=about,
                )
                self.answerer.start(stream, resumed=True)
            else:
                metrics.TAKEOVERS.labels("interrupt").inc()
                log.info(
                    "interrupting %s at offset %d", claim.id, claim.content_length, extra=about
                )
                stream.move(State.ENDING, Ending("interrupted", error=self._why(claim)))
                self.checkpointer.adopt(stream)
        return len(claims)

    def sweep_chunks(self) -> int:
        """Delete the chunk batches no streaming answer reads any more; returns how many."""
        return self._count(SWEEP_CHUNKS)

    def count_usage(self) -> int:
        """Add the tokens of the LLM calls metered since the last roll-up to their users'
        totals; returns how many calls (0 too when another process is doing it)."""
        return self._count(COUNT_USAGE)

    def _count(self, housekeeping: str) -> int:
        """Run one of the timer's housekeeping functions in a transaction of its own; the
        count it returns."""
        with self.pool.connection() as conn:
            row = conn.execute(housekeeping).fetchone()
        return int(row[0]) if row else 0

    def _resumes(self, claim: Claim) -> bool:
        return (
            self.settings.orphan_policy == "resume"
            and claim.resume_count <= self.settings.max_resumes
        )

    def _why(self, claim: Claim) -> str:
        if self.settings.orphan_policy != "resume":
            return "The process generating this answer stopped (CHATSVC_ORPHAN_POLICY=interrupt)."
        return (
            f"The process generating this answer stopped and it was already resumed "
            f"{claim.resume_count - 1} times (CHATSVC_MAX_RESUMES={self.settings.max_resumes})."
        )

    def _dead_owners(self, conn: Connection[Any]) -> list[str]:
        """Owners whose advisory lock is free: their process (or its session) is gone."""
        since = self.listening_since()
        if since is None or time.monotonic() - since < 2.0:
            # Just (re)connected, perhaps after a database restart: give other
            # processes time to take their locks again before judging them.
            return []
        dead = []
        for (owner,) in conn.execute(SELECT_OTHER_OWNERS, (self.owner,)).fetchall():
            key = owner_lock_key(owner)
            row = conn.execute(TRY_OWNER_LOCK, (OWNER_LOCK_CLASS, key)).fetchone()
            if row is not None and row[0]:
                conn.execute(UNLOCK_OWNER, (OWNER_LOCK_CLASS, key))
                dead.append(owner)
        conn.commit()
        return dead
