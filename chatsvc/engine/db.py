"""Connections: the pool each process uses, dedicated connections, the embedded server."""

from __future__ import annotations

import logging
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


def make_pool(url: str, size: int, *, name: str = "chatsvc") -> ConnectionPool:
    """A pool for short request transactions; SSE streams never hold a connection while idle."""
    kwargs: dict[str, Any] = {
        "application_name": name,
        "options": _CONNECT_OPTIONS,
        "connect_timeout": 5,
    }
    pool = ConnectionPool(
        url,
        min_size=1,
        max_size=size,
        kwargs=kwargs,
        name=name,
        timeout=10,
        check=ConnectionPool.check_connection,
        open=False,
    )
    pool.open(wait=False)
    return pool
