"""The process's single LISTEN connection: notifications from other processes into the hub."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import psycopg
from psycopg import Connection

from chatsvc.engine import db
from chatsvc.engine.background import Background
from chatsvc.engine.events import CHANNEL, decode
from chatsvc.engine.hub import RESYNC, Hub

log = logging.getLogger(__name__)

LIVENESS_LOCK = "SELECT pg_advisory_lock(%s, %s)"


class Listener(Background):
    """The process's single LISTEN connection, feeding the hub; reconnects by itself."""

    def __init__(
        self,
        url: str,
        hub: Hub,
        *,
        own_pids: Callable[[], set[int]],
        liveness_lock: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self.hub = hub
        self.own_pids = own_pids
        self.liveness_lock = liveness_lock
        self.connected = gevent.event.Event()
        self.connected_at: float | None = None

    def stop(self, timeout: float = 2.0) -> None:
        """Stop listening (at once: the loop may be waiting on the connection)."""
        self._stopped = True
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=timeout)

    def _run(self) -> None:
        backoff = 0.1
        first = True
        while not self._stopped:
            try:
                with db.connect(self.url, autocommit=True, purpose="chatsvc-listen") as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if self.liveness_lock is not None:
                        # Held for as long as this process is alive and connected:
                        # other processes read a free lock as "owner gone".
                        conn.execute(LIVENESS_LOCK, self.liveness_lock)
                    self.connected_at = time.monotonic()
                    self.connected.set()
                    backoff = 0.1
                    if not first:
                        # Anything committed while we were away was not delivered.
                        self.hub.broadcast(RESYNC)
                    first = False
                    self._listen(conn)
            except psycopg.Error as exc:
                self.connected.clear()
                self.connected_at = None
                log.warning("listener connection lost (%s); reconnecting in %.1fs", exc, backoff)
                gevent.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _listen(self, conn: Connection[Any]) -> None:
        while not self._stopped:
            conn.execute("SELECT 1")  # notice a dead connection even when all is quiet
            for notice in conn.notifies(timeout=5.0):
                if notice.pid in self.own_pids():
                    continue  # the committer already published it locally
                try:
                    events = decode(notice.payload)
                except (ValueError, KeyError, IndexError, TypeError):
                    log.warning("ignoring malformed notification %r", notice.payload[:200])
                    continue
                self.hub.publish(events)
