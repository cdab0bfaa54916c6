"""The `chatsvc` command line (documented in README.md, "Command line").

`serve` runs in what becomes gunicorn's master, so this module imports psycopg
(through the query modules) only inside the commands that talk to the database.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from uuid import UUID

import click

from chatsvc import logs
from chatsvc.config import ConfigError, Settings
from chatsvc.embedded import start_embedded

if TYPE_CHECKING:
    from psycopg import Connection

log = logging.getLogger("chatsvc")


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _tools(settings: Settings) -> Any:
    from chatsvc.engine import tools  # noqa: PLC0415

    try:
        return tools.load(settings.tools_file)
    except tools.ToolsError as exc:
        raise click.ClickException(str(exc)) from None


def _database_url(settings: Settings) -> str:
    return settings.database_url or start_embedded(settings.data_dir)


@contextmanager
def _connection() -> Iterator[Connection[Any]]:
    from chatsvc.engine import db  # noqa: PLC0415 - keep psycopg out of `serve`

    with db.connect(_database_url(_settings()), purpose="chatsvc-cli") as conn:
        yield conn


@click.group()
def main() -> None:
    """chatsvc: durable, resumable LLM answer streams on Postgres."""
    try:
        log_format = Settings.from_env().log_format
    except ConfigError:
        log_format = "text"  # the command itself reports the bad value
    logs.configure(log_format)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64))
def serve(host: str, port: int, workers: int) -> None:
    """Serve the app with gunicorn gevent workers (embedded Postgres without DATABASE_URL)."""
    from chatsvc import server  # noqa: PLC0415

    settings = _settings()
    _tools(settings)  # a bad tools file stops here, before anything starts
    if settings.database_url is None:
        os.environ["DATABASE_URL"] = start_embedded(settings.data_dir)
    # Migrations run in a child process: the master must not import psycopg
    # before it forks the workers. The advisory lock in `db upgrade` makes
    # instances that start together apply them once. Its report becomes a log line.
    upgrade = subprocess.run(
        [sys.executable, "-m", "chatsvc", "db", "upgrade"],
        check=False,
        stdout=subprocess.PIPE,
        text=True,
    )
    if upgrade.returncode != 0:
        log.error("applying migrations failed (exit status %d)", upgrade.returncode)
        raise SystemExit(1)
    log.info("migrations: %s", upgrade.stdout.strip())
    server.serve(
        host, port, workers, log_format=settings.log_format, metrics_dir=settings.metrics_dir
    )


@main.command("tools")
@click.option("--json", "as_json", is_flag=True, help="Exactly what the model is sent.")
def tools_command(as_json: bool) -> None:
    """The tools the model may call, as the model will see them."""

    from chatsvc.engine import tools  # noqa: PLC0415

    registry = _tools(_settings())
    if as_json:
        click.echo(json.dumps(registry.for_model(), indent=2, ensure_ascii=False))
    else:
        click.echo(tools.describe(registry))


@main.group()
def db() -> None:
    """Schema migrations."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations (safe to run from several processes at once)."""
    from chatsvc.engine import migrations  # noqa: PLC0415

    applied = migrations.upgrade(_database_url(_settings()))
    click.echo(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


@db.command("status")
def db_status() -> None:
    """Show every migration and whether it is applied."""
    from chatsvc.engine import migrations  # noqa: PLC0415

    for state in migrations.status(_database_url(_settings())):
        click.echo(f"{'applied' if state.applied else 'pending':8} {state.id}")


@main.group()
def users() -> None:
    """User accounts."""


@users.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May see every stream.")
@click.option("--token-limit", type=click.IntRange(0), default=None, help="Total tokens allowed.")
def users_create(name: str, admin: bool, token_limit: int | None) -> None:
    """Create a user; prints a new API token as the last line."""
    import psycopg  # noqa: PLC0415

    from chatsvc.engine import users as user_rows  # noqa: PLC0415

    with _connection() as conn:
        try:
            user = user_rows.create_user(conn, name, admin=admin, token_limit=token_limit)
        except psycopg.errors.UniqueViolation:
            raise click.ClickException(f"a user named {name!r} already exists") from None
        except psycopg.errors.CheckViolation:
            raise click.ClickException(
                "a user name is 1-64 letters, digits, '_', '.', '@' or '-'"
            ) from None
        token = user_rows.create_token(conn, user.id)
        conn.commit()
    click.echo(f"created user {user.name} ({user.id})")
    click.echo(token)


@main.group()
def tokens() -> None:
    """API tokens."""


@tokens.command("create")
@click.argument("name")
def tokens_create(name: str) -> None:
    """Issue another API token for a user; prints it as the last line."""
    from chatsvc.engine import users as user_rows  # noqa: PLC0415

    with _connection() as conn:
        user = user_rows.user_by_name(conn, name)
        if user is None:
            raise click.ClickException(f"no user named {name!r}")
        token = user_rows.create_token(conn, user.id)
        conn.commit()
    click.echo(f"new token for {user.name}")
    click.echo(token)


@main.command("streams")
def streams_command() -> None:
    """The active streams, as the database has them now."""
    from chatsvc.engine import status as stream_status  # noqa: PLC0415

    with _connection() as conn:
        rows = stream_status.active(conn, None, everything=True)
    if not rows:
        click.echo("no active streams")
        return
    click.echo(
        f"{'message_id':36}  {'conversation_id':36}  {'epoch':>5}  {'length':>7}  "
        f"{'age_s':>7}  {'lease_s':>7}  owner"
    )
    for s in rows:
        lease = "-"
        if s.lease_expires_at is not None and s.last_checkpoint_at is not None:
            lease = f"{(s.lease_expires_at - s.started_at - s.age).total_seconds():7.1f}"
        click.echo(
            f"{s.message_id}  {s.conversation_id}  {s.epoch:>5}  {s.content_length:>7}  "
            f"{s.age.total_seconds():7.1f}  {lease:>7}  {s.owner or '-'}"
        )


@main.command("show")
@click.argument("conversation_id", type=click.UUID)
def show(conversation_id: UUID) -> None:
    """A conversation and its messages with their true state."""
    from chatsvc.engine import messages  # noqa: PLC0415
    from chatsvc.engine import status as stream_status  # noqa: PLC0415

    with _connection() as conn:
        status = stream_status.conversation_status(conn, conversation_id)
        if status is None:
            raise click.ClickException(f"no conversation {conversation_id}")
        rows = messages.current_branch(conn, conversation_id)
    state = "streaming" if status.is_streaming else "idle"
    click.echo(f"conversation {conversation_id}: {state}")
    for m in rows:
        extra = f" epoch={m.epoch}" if m.role == "assistant" else ""
        if len(m.sibling_ids) > 1:
            extra += f" version {m.sibling_ids.index(m.id) + 1}/{len(m.sibling_ids)}"
        if m.error:
            extra += f" error={m.error!r}"
        if m.reasoning_length:
            extra += f" reasoning={m.reasoning_length} chars"
        click.echo(f"\n[{m.role} {m.status} {m.content_length} chars{extra}] {m.id}")
        click.echo(m.content)
        for part in m.parts or ():
            if part["type"] == "tool":
                outcome = part.get("error") or json.dumps(part.get("output"), ensure_ascii=False)
                click.echo(f"  tool {part['name']} {part['tool_call_id']}: {part['state']}")
                if part["state"].startswith("output"):
                    click.echo(f"    {outcome}"[:300])
