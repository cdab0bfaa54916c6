"""How many answers one user may have streaming at once, counted across every instance."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg import Connection

from chatsvc.config import Settings
from chatsvc.engine.statements import Statement, first_value, nothing
from chatsvc.errors import TooManyStreams

# The first key of the two-key advisory lock form, apart from the owners' locks
# (engine/leases.py) and the migration lock.
ACTIVE_LOCK_CLASS = 0x63737661  # 'csva'

# Held until the caller's transaction ends, so the count and the insert of the
# new streaming answer are one step for this user on every instance: two sends
# cannot both see room for one more.
LOCK_USER = "SELECT pg_advisory_xact_lock(%s, hashtext(%s::text))"

COUNT_STREAMING = "SELECT count(*) FROM messages WHERE user_id = %s AND status = 'streaming'"


def count_statements(user_id: UUID) -> tuple[Statement[None], Statement[int]]:
    """Take the user's lock, then count their streaming answers (under it: a statement of
    its own, with a snapshot taken after the lock was granted)."""
    lock = Statement(LOCK_USER, (ACTIVE_LOCK_CLASS, user_id), nothing)
    return lock, Statement(COUNT_STREAMING, (user_id,), first_value)


def check(settings: Settings, active: int) -> None:
    """Room for one more streaming answer beside `active` ones, or 429 too_many_streams."""
    if active >= settings.max_active_per_user:
        raise TooManyStreams(
            f"You have {active} answers streaming, the most allowed at once "
            f"(CHATSVC_MAX_ACTIVE_PER_USER); wait for one to finish or cancel one."
        )


def admit_stream(conn: Connection[Any], settings: Settings, user_id: UUID) -> None:
    """Room for one more streaming answer of this user, or 429 too_many_streams.

    Call it in the transaction that then inserts (or restarts) the streaming
    answer, before anything else is written: it holds a per-user lock until commit.
    """
    if conn.autocommit:
        raise RuntimeError("admit_stream needs the transaction that starts the answer")
    lock, count = count_statements(user_id)
    lock.run(conn)
    check(settings, count.run(conn))
