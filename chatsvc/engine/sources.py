"""What followers read from: the database (through the pool), the hub, and shared rows."""

from __future__ import annotations

import time
from dataclasses import dataclass
from uuid import UUID

import gevent.event
from psycopg_pool import ConnectionPool

from chatsvc.engine import messages as message_rows
from chatsvc.engine.hub import Hub
from chatsvc.engine.messages import Message, PartsFrom
from chatsvc.engine.positions import Position
from chatsvc.errors import wrap_exceptions


class RecentRows:
    """Message rows read to announce them, shared for a moment by a process's followers.

    When an answer starts, every follower of its conversation in the process must
    announce it; one read serves them all. A row read after the event that made a
    follower want it is as good as its own read: the follower was subscribed when
    that event was published, so every later delta reaches it, and any it missed
    before subscribing is a gap it fills from the database anyway.
    """

    def __init__(self, pool: ConnectionPool, ttl_s: float = 2.0) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        self._rows: dict[UUID, tuple[float, gevent.event.AsyncResult]] = {}

    def get(self, message_id: UUID) -> Message | None:
        """The message, read at most once per `ttl_s` however many followers ask."""
        now = time.monotonic()
        hit = self._rows.get(message_id)
        if hit is not None and now - hit[0] < self.ttl_s:
            row: Message | None = hit[1].get()
            return row
        if len(self._rows) > 1000:
            self._rows = {k: v for k, v in self._rows.items() if now - v[0] < self.ttl_s}
        result = gevent.event.AsyncResult()
        self._rows[message_id] = (now, result)
        try:
            with wrap_exceptions(), self.pool.connection() as conn:
                row = message_rows.get_any(conn, message_id)
        except BaseException as exc:
            del self._rows[message_id]
            result.set_exception(exc)
            raise
        result.set(row)
        return row


@dataclass(frozen=True)
class Sources:
    """What followers read from: the pool, the hub, shared rows; and the heartbeat."""

    pool: ConnectionPool
    hub: Hub
    heartbeat_s: float
    rows: RecentRows

    def read(self, message_id: UUID, position: Position) -> PartsFrom | None:
        """The answer after `position` (text, reasoning, tool states), from the database."""
        with wrap_exceptions(), self.pool.connection() as conn:
            return message_rows.parts_from(conn, message_id, position.content, position.reasoning)
