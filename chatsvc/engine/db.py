"""Connections: the pool each process uses, dedicated connections, the embedded server."""

from __future__ import annotations

import logging
import time
import weakref
from typing import Any

import psycopg
from psycopg import Connection
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

# Every connection says who it is in pg_stat_activity, and a request that would
# wait on a lock or a slow query for long gives up instead of holding a greenlet.
_CONNECT_OPTIONS = "-c statement_timeout=30000 -c lock_timeout=10000"


def connect(
    url: str, *, autocommit: bool = False, purpose: str = "chatsvc"
) -> Connection[TupleRow]:
    """Open one dedicated connection (the listener and the checkpointer each keep one)."""
    return psycopg.connect(
        url,
        autocommit=autocommit,
        application_name=purpose,
        options=_CONNECT_OPTIONS,
        connect_timeout=5,
    )


# A pooled connection is checked (one round trip) before it is lent only when it
# has not been lent for this long: a busy pool's connections were in use a moment
# ago, and a connection that broke since (Postgres restarted) fails its request and
# is dropped when it comes back.
CHECK_AFTER_IDLE_S = 2.0
_lent_at: weakref.WeakKeyDictionary[Connection[Any], float] = weakref.WeakKeyDictionary()


def _check_if_idle(conn: Connection[Any]) -> None:
    now = time.monotonic()
    last = _lent_at.get(conn)
    _lent_at[conn] = now
    if last is None or now - last >= CHECK_AFTER_IDLE_S:
        ConnectionPool.check_connection(conn)


def make_pool(url: str, size: int, *, name: str = "chatsvc") -> ConnectionPool:
    """A pool for short request transactions; SSE streams never hold a connection while idle."""
    # psycopg's own prepared statements are off: when it has any, every rollback (a
    # request that fails its checks) deallocates all of the session's, the send's too
    # (engine/statements.py), which are prepared once per connection and kept.
    kwargs: dict[str, Any] = {
        "application_name": name,
        "options": _CONNECT_OPTIONS,
        "connect_timeout": 5,
        "prepare_threshold": None,
    }
    pool = ConnectionPool(
        url,
        min_size=1,
        max_size=size,
        kwargs=kwargs,
        name=name,
        timeout=10,
        check=_check_if_idle,
        open=False,
    )
    pool.open(wait=False)
    return pool
