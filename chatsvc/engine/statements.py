"""Statements that can run alone or several in one round trip (the send's hot path)."""

from __future__ import annotations

import functools
import hashlib
import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import psycopg
from psycopg import Connection, Cursor
from psycopg.rows import class_row

T = TypeVar("T")


@dataclass(frozen=True)
class Statement(Generic[T]):
    """A query, its parameters, and how its result reads."""

    sql: str
    params: Mapping[str, Any] | Sequence[Any]
    read: Callable[[Cursor[Any]], T]

    def run(self, conn: Connection[Any]) -> T:
        """Run it alone (server-side binding, as any query)."""
        return self.read(conn.execute(self.sql, self.params))


def together(conn: Connection[Any], *statements: Statement[Any]) -> list[Any]:
    """Run statements in order in one round trip; the result of each.

    Under load every wait on the database hands the worker's loop to other
    greenlets, so a round trip costs far more than Postgres's work; a send made of
    eleven statements in a row waited eleven times. Here they go as one simple query
    of `EXECUTE`s of statements prepared on this connection (a plan made once, as
    psycopg's own prepared statements are), their arguments bound by psycopg.
    Postgres gives each statement its own snapshot, as if sent one by one, so one
    that follows a lock sees what the lock's holder committed; an error stops the
    rest.
    """
    cur = psycopg.ClientCursor(conn)
    calls = [cur.mogrify(*_prepared(conn, s)) for s in statements]
    cur.execute(";\n".join(calls))
    results = []
    for number, statement in enumerate(statements):
        if number:
            cur.nextset()
        results.append(statement.read(cur))
    return results


# Statements this process prepared, per connection; a connection that broke is
# dropped by the pool, and its successor prepares them again. A prepared
# statement outlives a rolled-back transaction, but not psycopg's own
# `DEALLOCATE ALL`, which it sends at a rollback once it has prepared statements
# of its own: the pool's connections have those off (db.make_pool).
_PREPARED: weakref.WeakKeyDictionary[Connection[Any], set[str]] = weakref.WeakKeyDictionary()
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s|%%")


def _prepared(conn: Connection[Any], statement: Statement[Any]) -> tuple[str, list[Any]]:
    """The `EXECUTE` of a statement (prepared on `conn` first if it is not yet), and its
    arguments, for psycopg to bind."""
    name, text, order = _numbered(statement.sql)
    known = _PREPARED.setdefault(conn, set())
    if name not in known:
        conn.execute(f"PREPARE {name} AS {text}", prepare=False)
        known.add(name)
    params = statement.params
    values = [params[key] for key in order] if isinstance(params, Mapping) else list(params)
    if not values:
        return f"EXECUTE {name}", values
    return f"EXECUTE {name}({', '.join(['%s'] * len(values))})", values


@functools.cache
def _numbered(sql: str) -> tuple[str, str, list[str]]:
    """A statement's prepared name, its text with `$n` placeholders (a name used twice is
    one parameter), and the names of its parameters in that order (for named ones)."""
    order: list[str] = []
    positional = 0

    def place(match: re.Match[str]) -> str:
        nonlocal positional
        if match.group(0) == "%%":
            return "%"
        if match.group(1) is None:
            positional += 1
            return f"${positional}"
        if match.group(1) not in order:
            order.append(match.group(1))
        return f"${order.index(match.group(1)) + 1}"

    text = _PLACEHOLDER.sub(place, sql)
    if positional and order:
        raise ValueError("a statement's placeholders are all named or all positional")
    name = "chatsvc_" + hashlib.sha1(sql.encode(), usedforsecurity=False).hexdigest()[:16]
    return name, text, order


def nothing(cur: Cursor[Any]) -> None:
    """A statement run for what it does (a lock, an update), not for rows."""


def first_value(cur: Cursor[Any]) -> Any:
    """The first column of the first row, or None with no row."""
    row = cur.fetchone()
    return None if row is None else row[0]


def rows_of(cls: type[T]) -> Callable[[Cursor[Any]], list[T]]:
    """Every row, as `cls` built from the columns by name."""

    def read(cur: Cursor[Any]) -> list[T]:
        make = class_row(cls)(cur)
        return [make(row) for row in cur.fetchall()]

    return read


def row_of(cls: type[T]) -> Callable[[Cursor[Any]], T | None]:
    """The first row as `cls`, or None with no row."""
    rows = rows_of(cls)

    def read(cur: Cursor[Any]) -> T | None:
        found = rows(cur)
        return found[0] if found else None

    return read
