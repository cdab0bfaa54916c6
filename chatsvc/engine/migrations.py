"""Schema migrations: numbered SQL files in sql/migrations, applied by yoyo."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from yoyo import read_migrations
from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend
from yoyo.connections import DatabaseURI

from chatsvc.engine import db

# Several processes may start at once on an empty database (two instances, a
# rolling deploy). yoyo's own lock table is itself created by the first run, so
# the whole run is serialised by a session advisory lock held on a separate
# connection; whoever comes second finds nothing left to apply.
_LOCK_KEY = 0x63686174  # 'chat'
ADVISORY_LOCK = "SELECT pg_advisory_lock(%s)"
ADVISORY_UNLOCK = "SELECT pg_advisory_unlock(%s)"


@dataclass(frozen=True)
class MigrationState:
    """One migration file and whether it is applied."""

    id: str
    applied: bool


class _Backend(PostgresqlPsycopgBackend):  # type: ignore[misc]
    """yoyo's psycopg 3 backend, connecting with any libpq URL as given (sockets included)."""

    def connect(self, dburi: Any) -> psycopg.Connection[Any]:
        return db.connect(dburi.args["url"], autocommit=True, purpose="chatsvc-migrate")


def _migrations() -> Any:
    path = resources.files("chatsvc") / "sql" / "migrations"
    return read_migrations(str(path))


def _backend(url: str) -> Any:
    dbname = conninfo_to_dict(url).get("dbname")
    uri = DatabaseURI("postgresql+psycopg", None, None, None, None, dbname, {"url": url})
    backend = _Backend(uri, "_yoyo_migration")
    backend.init_database()
    return backend


def upgrade(url: str, until: str | None = None) -> list[str]:
    """Apply every pending migration (or those up to and including the id `until`); return
    the ids applied (empty when up to date)."""
    with db.connect(url, autocommit=True, purpose="chatsvc-migrate-lock") as lock_conn:
        lock_conn.execute(ADVISORY_LOCK, (_LOCK_KEY,))
        try:
            backend = _backend(url)
            try:
                migrations = _migrations()
                if until is not None:
                    ids = [m.id for m in migrations]
                    migrations = migrations[: ids.index(until) + 1]
                with backend.lock():
                    pending = backend.to_apply(migrations)
                    backend.apply_migrations(pending)
                return [m.id for m in pending]
            finally:
                backend.connection.close()
        finally:
            lock_conn.execute(ADVISORY_UNLOCK, (_LOCK_KEY,))


def status(url: str) -> list[MigrationState]:
    """Every migration file, in order, with whether it is applied to this database."""
    backend = _backend(url)
    try:
        applied = backend.get_applied_migration_hashes()
        return [MigrationState(m.id, m.hash in applied) for m in _migrations()]
    finally:
        backend.connection.close()


SELECT_APPLIED = "SELECT migration_id FROM _yoyo_migration"


def pending(conn: psycopg.Connection[Any]) -> list[str]:
    """Ids of migration files not applied to this database (cheap: for /readyz)."""
    try:
        with conn.transaction():
            applied = {row[0] for row in conn.execute(SELECT_APPLIED)}
    except psycopg.errors.UndefinedTable:
        applied = set()
    return [m.id for m in _migrations() if m.id not in applied]
