"""The services one process runs: pool, hub, listener, checkpointer, answerer."""

from __future__ import annotations

import logging
import os
import secrets
import socket

import psycopg.waiting

from chatsvc.config import Settings
from chatsvc.engine import db, events, hub, tools
from chatsvc.engine.answers import Answerer
from chatsvc.engine.checkpoint import Checkpointer
from chatsvc.engine.followers import RecentRows, Sources
from chatsvc.engine.leases import OWNER_LOCK_CLASS, Reaper, owner_lock_key
from chatsvc.engine.listener import Listener
from chatsvc.engine.pressure import Pressure

log = logging.getLogger(__name__)


def check_cooperative() -> None:
    """Refuse to run with psycopg's C wait function: every query would block the whole worker."""
    if getattr(psycopg.waiting.wait, "__name__", "") == "wait_c":
        raise RuntimeError(
            "psycopg was imported before gevent patched the standard library, so every query "
            "would block the whole worker. Import chatsvc.wsgi only in a gevent-patched process "
            "(gunicorn -k gevent without --preload), or call gevent.monkey.patch_all() first."
        )


class Runtime:
    """Per-process state, attached to the Flask app as app.extensions['chatsvc']."""

    def __init__(self, settings: Settings, url: str) -> None:
        check_cooperative()
        self.settings = settings
        self.url = url
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.pool = db.make_pool(url, settings.pool_size)
        self.hub = hub.Hub(settings.subscriber_queue)
        self.checkpointer = Checkpointer(url, settings, self.hub.publish, self.owner)
        self.listener = Listener(
            url,
            self.hub,
            own_pids=self._own_pids,
            liveness_lock=(OWNER_LOCK_CLASS, owner_lock_key(self.owner)),
        )
        # Loaded once per process; `chatsvc serve` refuses a bad tools file before this.
        self.tools = tools.load(settings.tools_file)
        self.answerer = Answerer(settings, self.pool, self.checkpointer, self.tools)
        self.pressure = Pressure(
            settings.max_loop_lag_ms,
            waiting=lambda: self.pool.get_stats().get("requests_waiting", 0),
        )
        self.reaper = Reaper(
            settings,
            self.pool,
            self.checkpointer,
            self.answerer,
            self.owner,
            listening_since=lambda: self.listener.connected_at,
            busy=lambda: self.pressure.overloaded,
        )
        self.sources = Sources(self.pool, self.hub, settings.heartbeat_s, RecentRows(self.pool))
        self.hub.on_event(self._on_event)
        self.started = False
        self.stopped = False

    def _own_pids(self) -> set[int]:
        return self.checkpointer.backend_pids

    def _on_event(self, event: events.Event) -> None:
        if isinstance(event, events.CancelRequested):
            self.checkpointer.request_cancel(event.message_id)
        elif isinstance(event, events.LeasesReleased) and not self.hub.closing:
            self.reaper.wake()

    def start(self) -> None:
        """Start the background greenlets (idempotent)."""
        if self.started:
            return
        self.started = True
        self.listener.start()
        self.checkpointer.start()
        self.reaper.start()
        self.pressure.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM): take no new work, hand every stream over, end SSE streams.

        The release commits each stream's text and clears its owner and lease, and
        notifies the other processes, which take the streams over at once. Local
        followers get the last text first, then a clean end, and reconnect elsewhere
        with Last-Event-ID.
        """
        if self.hub.closing:
            return
        self.hub.closing = True
        self.reaper.stop()
        released = self.checkpointer.release_all(timeout)
        log.info("shutting down: released %d streams", released)
        self.hub.broadcast(hub.CLOSING)

    def stop(self) -> None:
        """Shut down, then stop every greenlet and close every connection."""
        if self.stopped:
            return
        self.stopped = True
        self.shutdown()
        self.listener.stop()
        self.checkpointer.stop()
        self.pressure.stop()
        self.pool.close()
