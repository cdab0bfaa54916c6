"""The request's view of the process: its Runtime, and the one request prologue."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import current_app
from psycopg import Connection
from psycopg.pq import TransactionStatus

from chatsvc.engine.runtime import Runtime
from chatsvc.errors import wrap_exceptions


def runtime() -> Runtime:
    """The Runtime of the current Flask app."""
    rt: Runtime = current_app.extensions["chatsvc"]
    return rt


@contextmanager
def connection(
    rt: Runtime | None = None, timeout: float | None = None
) -> Iterator[Connection[Any]]:
    """A pooled connection (committed on success), with driver errors translated to ApiErrors."""
    with wrap_exceptions(), (rt or runtime()).pool.connection(timeout=timeout) as conn:
        yield conn


@contextmanager
def statement(rt: Runtime | None = None) -> Iterator[Connection[Any]]:
    """A pooled connection in autocommit, for a single read: one round trip, where a
    transaction would add a BEGIN and a COMMIT (every request's token lookup)."""
    with connection(rt) as conn:
        conn.autocommit = True
        try:
            yield conn
        finally:
            if conn.broken or conn.pgconn.transaction_status != TransactionStatus.IDLE:
                conn.close()  # the pool drops it: it must never hand out an autocommit one
            else:
                conn.autocommit = False
