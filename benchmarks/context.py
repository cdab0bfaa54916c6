"""What every measurement works with: the parameters, the running services, the counters.

chatsvc runs as two single-worker instances, A and B, sharing the database, plus (in
the full run) C, which holds each answer's checkpoints a checkpoint interval apart
(`CHATSVC_CHECKPOINT_MIN_MS`); the baseline as two single-worker instances too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gevent.pool

from benchmarks import session, wire
from benchmarks.services import Database, Service

NS = 1_000_000_000


@dataclass(frozen=True)
class Params:
    """What a run measures, and how hard."""

    # The headline: a real model's shape (clocked tokens), chatsvc next to the baseline.
    token_chars: int = 4
    token_rate: float = 50.0  # tokens per second per answer
    headline_answer_s: float = 10.0  # 500 tokens, about 2,000 characters
    headline_levels: tuple[int, ...] = (10, 50, 200)
    headline_window_s: float = 12.0
    headline_bound_level: int = 50  # where the p99 target applies
    headline_wal_repeats: int = 3  # single answers measured for WAL (the median counts)
    runs: int = 1  # headline measurements in one process (each figure becomes a range)
    # The ceiling: concurrent answers at the headline pace, stepped up until the bound breaks.
    ceiling_levels: tuple[int, ...] = (50, 100, 150, 200, 300, 400, 500, 600, 800)
    ceiling_window_s: float = 15.0
    # The old, secondary shape: stamped chunks.
    streams: int = 200
    rate: float = 20.0  # chunks per second per stream
    chunk_chars: int = 24  # room for a stamp ("<" + up to 20 digits + ">")
    answer_s: float = 6.0  # one answer: 120 chunks, about 2.9 KB
    window_s: float = 12.0  # the steady window measured, after a ramp of one answer
    levels: tuple[int, ...] = (10, 25, 50, 75, 100, 150, 200, 300)
    # p99 is set by rare stalls (a full GC of litellm's heap takes ~165 ms): measure long
    level_window_s: float = 20.0
    p99_bound_ms: float = 250.0
    # chunks, chars per chunk, seconds between chunks, answers measured (the median counts)
    wal_shapes: tuple[tuple[int, int, float, int], ...] = ((100, 200, 0.02, 3), (5000, 4, 0.002, 1))
    subscribers: int = 5000
    subscriber_conversations: int = 10
    heartbeat_s: float = 2.0
    lease_s: float = 10.0
    checkpoint_ms: int = 100
    takeover_trials: int = 3
    profile: bool = False
    max_seconds: float = 900.0  # the full run besides the headline (time_limit adds it)


SMOKE = Params(
    headline_answer_s=1.0,
    headline_levels=(5,),
    headline_window_s=1.0,
    headline_bound_level=5,
    headline_wal_repeats=1,
    ceiling_levels=(5, 10),
    ceiling_window_s=1.0,
    streams=10,
    answer_s=0.5,
    window_s=0.5,
    levels=(10,),
    level_window_s=0.5,
    wal_shapes=((20, 200, 0.01, 1), (250, 4, 0.002, 1)),
    subscribers=50,
    subscriber_conversations=5,
    heartbeat_s=1.0,
    takeover_trials=1,
    max_seconds=150.0,
)


@dataclass
class Bench:
    """Everything the phases work with."""

    params: Params
    db: Database
    llm: Service
    chatsvc: list[Service]  # A, B
    baseline: list[Service]
    tokens: list[str]  # one per bench user; the load runs spread their answers over them
    out: Path  # profiles and other files worth keeping
    restart: Callable[[int], Service]  # a fresh chatsvc instance in slot i (after a kill)
    batched: Service | None  # C (full run only): CHATSVC_CHECKPOINT_MIN_MS = checkpoint_ms
    coalesce_ms: int = 0  # A's and B's CHATSVC_CHECKPOINT_MIN_MS: the headline's bound - 30 ms
    notes: list[str] = field(default_factory=list)
    _seed: int = 0

    @property
    def token(self) -> str:
        """The first bench user's token, for the phases that need one user."""
        return self.tokens[0]

    def seed(self, what: str) -> str:
        """A fresh seed, so no two answers are the same text."""
        self._seed += 1
        return f"{what}{self._seed}"


say = session.progress("bench")  # progress, on stderr (stdout is for the table)


# --- database counters -------------------------------------------------------------

COUNTERS = """
SELECT pg_current_wal_lsn() - '0/0'::pg_lsn,
       pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
       (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())
"""


def counters(db: Database) -> dict[str, int]:
    """WAL position, next transaction id, commits so far (pg_stat_database), WAL full pages."""
    with db.connect() as conn:
        row = conn.execute(COUNTERS).fetchone()
        assert row is not None
        result = {"wal": int(row[0]), "xid": int(row[1]), "commits": int(row[2])}
        try:
            fpi = conn.execute("SELECT wal_fpi FROM pg_stat_wal").fetchone()
            result["fpi"] = int(fpi[0]) if fpi else -1
        except Exception:
            result["fpi"] = -1
    return result


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in before}


METRIC = re.compile(r"^(chatsvc_[a-z_]+) ([0-9.e+-]+)$", re.MULTILINE)


def chatsvc_metrics(instances: list[Service]) -> dict[str, float]:
    """/metrics of the instances, summed."""
    total: dict[str, float] = {}
    for instance in instances:
        with wire.open_request(instance.base, "GET", "/metrics") as response:
            text = response.read_all().decode()
        for name, value in METRIC.findall(text):
            total[name] = total.get(name, 0.0) + float(value)
    return total


def create_conversations(bench: Bench, count: int) -> list[str]:
    """Fresh conversations of the first bench user (`bench.token`)."""
    return [conversation for conversation, _ in owned_conversations(bench, count, users=1)]


def owned_conversations(bench: Bench, count: int, users: int = 0) -> list[tuple[str, str]]:
    """Fresh conversations and their owners' tokens, the first `users` bench users (0: all)
    in turn (each answer gets its own: one active answer per conversation)."""
    pool = gevent.pool.Pool(8)
    base = bench.chatsvc[0].base
    tokens = bench.tokens[: users or None]

    def one(i: int) -> tuple[str, str]:
        token = tokens[i % len(tokens)]
        conversation = wire.call(base, "POST", "/api/conversations", token=token, body={})
        return str(conversation["id"]), token

    return list(pool.imap(one, range(count)))
