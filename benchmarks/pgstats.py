"""What Postgres itself is busy with: its WAL writes and syncs, and its backends' wait events.

The ceiling reports these per step, to tell which of Postgres's resources runs out
first: WAL flushes (`IO:WalSync`, `LWLock:WALWrite`), the NOTIFY commit lock
(`Lock:object`, `LWLock:NotifyQueue`...) or plain CPU (an active backend with no
wait event).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import gevent

from benchmarks.services import Database

# PostgreSQL 14-17 count WAL writes and syncs in pg_stat_wal; 18 moved them to
# pg_stat_io (object 'wal'). Both are cumulative statistics, which backends flush
# to shared memory about once a second: a few-second window is exact to about that.
WAL_IO_BEFORE_18 = "SELECT wal_write, wal_sync FROM pg_stat_wal"
WAL_IO_FROM_18 = """
SELECT coalesce(sum(writes), 0)::bigint, coalesce(sum(fsyncs), 0)::bigint
FROM pg_stat_io WHERE object = 'wal'
"""


def _version_num(db: Database) -> int:
    with db.connect() as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    return int(row[0]) if row else 0


def wal_io_source(db: Database) -> str:
    """Where `wal_io` reads from on this server."""
    version = _version_num(db)
    if version >= 180000:
        return "pg_stat_io (object 'wal': writes, fsyncs)"
    return "pg_stat_wal (wal_write, wal_sync)" if version >= 140000 else "n/a"


def wal_io(db: Database) -> dict[str, int]:
    """WAL writes and syncs (fsync/fdatasync: the flushes a commit waits for) so far; empty
    where the server does not count them."""
    version = _version_num(db)
    if version < 140000:
        return {}
    query = WAL_IO_FROM_18 if version >= 180000 else WAL_IO_BEFORE_18
    with db.connect() as conn:
        row = conn.execute(query).fetchone()
    return {"writes": int(row[0]), "syncs": int(row[1])} if row else {}


WAITS = """
SELECT coalesce(wait_event_type, 'CPU'), coalesce(wait_event, 'running'), count(*)
FROM pg_stat_activity
WHERE state = 'active' AND backend_type = 'client backend'
  AND datname = current_database() AND pid <> pg_backend_pid()
GROUP BY 1, 2
"""


class WaitSampler:
    """Polls pg_stat_activity from a connection of its own every `interval` seconds and counts
    the (wait event type, wait event) of the active client backends; "CPU:running" is an
    active backend waiting for nothing."""

    def __init__(self, db: Database, interval: float = 0.1) -> None:
        self.db = db
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self.samples = 0
        self.error: str | None = None
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        """Start sampling (in a greenlet)."""
        self._greenlet = gevent.spawn(self._poll)

    def stop(self) -> None:
        """Stop sampling."""
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=5)

    def _poll(self) -> None:
        try:
            with self.db.connect() as conn:
                while True:
                    started = time.monotonic()
                    for kind, event, count in conn.execute(WAITS).fetchall():
                        self.counts[f"{kind}:{event}"] += int(count)
                    self.samples += 1
                    time.sleep(max(self.interval - (time.monotonic() - started), 0))
        except Exception as exc:  # a failed sampler leaves a note, not a failed run
            self.error = str(exc) or type(exc).__name__

    def summary(self, top: int = 6) -> dict[str, Any]:
        """The samples taken, the mean number of active backends, and the most common wait
        events with the mean number of backends in each."""
        samples = max(self.samples, 1)
        return {
            "samples": self.samples,
            "active_mean": round(sum(self.counts.values()) / samples, 2),
            "top": [
                {"event": event, "mean": round(count / samples, 2)}
                for event, count in self.counts.most_common(top)
            ],
            "error": self.error,
        }
