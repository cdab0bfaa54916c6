"""Whether this worker can take another answer: the lag of its event loop, and its pool.

A worker is one gevent loop on one core. When it has more answers than the core can
stream, every greenlet waits longer for its turn: tokens, checkpoints and deliveries
all come late, and requests wait for pool connections until they time out. The
loop's lag says so before anything fails: a greenlet asks to sleep a tenth of a
second and measures how much later it woke. Each sample counts for at most twice the
limit and moves the smoothed lag a third of the way to it, so one stall, however long
(a garbage collection, a burst of connections), never makes a
worker busy, and a lag over the limit that lasts a few samples does. Requests
waiting for a pooled connection at three samples in a row make it busy too: the
pool runs out before the loop's lag shows it when each connection is held across
several turns of a lagging loop. While the smoothed lag is over
`CHATSVC_MAX_LOOP_LAG_MS`, or the pool is starved, the worker refuses to start answers
(sends, edits, regenerations, continues: `503 unavailable` with `Retry-After`), takes
over no orphans, and says it is not ready; the answers it has go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import gevent

from chatsvc import metrics
from chatsvc.engine.background import Background

log = logging.getLogger(__name__)

# How often the loop is sampled, how much of each new sample the smoothed lag takes, and
# the most a sample counts for, in limits.
INTERVAL_S = 0.1
WEIGHT = 1 / 3
CAP = 2.0
# Samples in a row with requests waiting for the pool that make a worker busy.
STARVED_SAMPLES = 3


class Pressure(Background):
    """Samples this process's event loop (the smoothed lag in `lag`, seconds) and its pool's
    queue; `overloaded` says whether the worker is too busy to take another answer."""

    def __init__(self, limit_ms: int, waiting: Callable[[], int] = lambda: 0) -> None:
        super().__init__()
        self.limit = limit_ms / 1000
        self.waiting = waiting  # requests waiting for a pooled connection now
        self.lag = 0.0  # smoothed, each sample capped
        self.starved = 0  # samples in a row with requests waiting for the pool
        self._busy = False

    @property
    def overloaded(self) -> bool:
        """Whether the smoothed lag is over the limit (never, with the limit 0)."""
        return self._busy

    def measure(self, interval: float = INTERVAL_S) -> float:
        """Sleep `interval`, then observe how much later than asked the loop woke us."""
        asked = time.monotonic()
        gevent.sleep(interval)
        lag = max(0.0, time.monotonic() - asked - interval)
        self.observe(lag, self.waiting())
        return lag

    def observe(self, lag: float, waiting: int = 0) -> None:
        """Take one sample: the loop's lag (seconds), and the requests waiting for the pool."""
        metrics.LOOP_LAG_SECONDS.observe(lag)
        if self.limit > 0:
            lag = min(lag, CAP * self.limit)
        self.lag += WEIGHT * (lag - self.lag)
        self.starved = self.starved + 1 if waiting > 0 else 0
        busy = self.limit > 0 and (self.lag > self.limit or self.starved >= STARVED_SAMPLES)
        if busy != self._busy:
            self._busy = busy
            metrics.WORKERS_BUSY.set(1 if busy else 0)
            log.log(
                logging.WARNING if busy else logging.INFO,
                "%s: event loop lag %.0f ms (smoothed; limit %.0f), %d samples in a row with "
                "requests waiting for a pooled connection",
                "busy, refusing new answers" if busy else "no longer busy",
                self.lag * 1000,
                self.limit * 1000,
                self.starved,
            )

    def _run(self) -> None:
        while not self._stopped:
            self.measure()
