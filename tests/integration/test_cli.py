"""The command line where a newcomer stumbles: re-run walk-throughs, wrong directories, a
database without the schema, a port that is taken."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result

from chatsvc import cli
from tests.conftest import database_url, drop_database
from tests.support import query


def run(args: list[str], **env: str | None) -> Result:
    """The command in this process, with the given environment on top of ours."""
    return CliRunner().invoke(cli.main, args, env=env)


def test_users_create_of_an_existing_user_says_what_to_do(db_url: str) -> None:
    first = run(["users", "create", "alice"], DATABASE_URL=db_url)
    assert first.exit_code == 0, first.output
    again = run(["users", "create", "alice"], DATABASE_URL=db_url)
    assert again.exit_code == 1
    assert "already exists: `chatsvc tokens create alice`" in again.output
    assert query(db_url, "SELECT count(*) AS n FROM api_tokens")[0]["n"] == 1


def test_users_create_exist_ok_issues_another_token_and_changes_nothing_else(
    db_url: str,
) -> None:
    created = run(["users", "create", "alice", "--token-limit", "5"], DATABASE_URL=db_url)
    rerun = run(["users", "create", "alice", "--exist-ok", "--admin"], DATABASE_URL=db_url)
    assert rerun.exit_code == 0, rerun.output
    tokens = [created.output.splitlines()[-1], rerun.output.splitlines()[-1]]
    assert tokens[0].startswith("csk_") and tokens[1].startswith("csk_")
    assert tokens[0] != tokens[1]
    assert "exists, unchanged" in rerun.output
    rows = query(db_url, "SELECT is_admin, token_limit FROM users WHERE name = 'alice'")
    assert rows == [{"is_admin": False, "token_limit": 5}]
    assert query(db_url, "SELECT count(*) AS n FROM api_tokens")[0]["n"] == 2


@pytest.mark.parametrize(
    "args",
    [["users", "create", "alice"], ["tokens", "create", "alice"], ["streams"], ["db", "status"]],
)
def test_commands_refuse_to_create_an_embedded_database(tmp_path: Path, args: list[str]) -> None:
    data = tmp_path / "elsewhere"
    result = run(args, DATABASE_URL=None, CHATSVC_DATA_DIR=str(data))
    assert result.exit_code == 1
    assert f"no embedded Postgres in {data}" in result.output
    assert "CHATSVC_DATA_DIR" in result.output and "DATABASE_URL" in result.output
    assert "Traceback" not in result.output
    assert not data.exists()


@pytest.fixture
def unmigrated_db(pg_server: str) -> Iterator[str]:
    name = f"chatsvc_unmigrated_{id(object())}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield database_url(pg_server, name)
    drop_database(pg_server, name)


def test_a_database_without_the_schema_is_named_with_the_fix(unmigrated_db: str) -> None:
    result = run(["users", "create", "alice"], DATABASE_URL=unmigrated_db)
    assert result.exit_code == 1
    assert "lacks chatsvc's migrations 0001.initial" in result.output
    assert "run `chatsvc db upgrade`" in result.output
    assert "password" not in result.output
    upgraded = run(["db", "upgrade"], DATABASE_URL=unmigrated_db)
    assert upgraded.exit_code == 0, upgraded.output
    assert run(["users", "create", "alice"], DATABASE_URL=unmigrated_db).exit_code == 0


def test_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run(["streams"], DATABASE_URL=f"postgresql://u:secret@127.0.0.1:{port}/x")
    assert result.exit_code == 1
    assert result.output.startswith(
        f"Error: cannot connect to user=u dbname=x host=127.0.0.1 port={port}"
    )
    assert "secret" not in result.output


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(
            ["serve", "--port", str(port)], DATABASE_URL=None, CHATSVC_DATA_DIR=str(tmp_path)
        )
    assert result.exit_code == 1
    assert result.output == f"Error: port {port} is in use on 127.0.0.1; try --port\n"
    assert list(tmp_path.iterdir()) == []  # nothing was started
