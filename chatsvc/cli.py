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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import click

from chatsvc import logs
from chatsvc.config import OFFLINE_MODEL, ConfigError, Settings
from chatsvc.embedded import embedded_exists, start_embedded

if TYPE_CHECKING:
    from psycopg import Connection

T = TypeVar("T")
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


NO_DATABASE = """no database: DATABASE_URL is unset and there is no embedded Postgres in {path}
(CHATSVC_DATA_DIR, by default .chatsvc in the current directory). Run this where
`chatsvc serve` runs, or set CHATSVC_DATA_DIR to its data directory or DATABASE_URL
to its Postgres; `chatsvc db upgrade` would create an empty database here."""


def _database_url(settings: Settings, *, create: bool = False) -> str:
    """DATABASE_URL, else the embedded Postgres in CHATSVC_DATA_DIR.

    Only `serve` and `db upgrade` may create the embedded one: anywhere else, a
    missing one means the command runs in the wrong place, and a new empty
    database would only fail later with a puzzling error.
    """
    if settings.database_url:
        return settings.database_url
    if not create and not embedded_exists(settings.data_dir):
        raise click.ClickException(NO_DATABASE.format(path=settings.data_dir.resolve()))
    return start_embedded(settings.data_dir)


def _where(url: str) -> str:
    """A database URL as it may be shown: without its password."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: PLC0415

    try:
        params = conninfo_to_dict(url)
    except Exception:  # a URL libpq cannot parse is reported by connect itself
        return "the database"
    params.pop("password", None)
    return make_conninfo("", **params)


@contextmanager
def _connection() -> Iterator[Connection[Any]]:
    """A connection to a database that has chatsvc's schema, or a one-line error."""
    import psycopg  # noqa: PLC0415 - keep psycopg out of `serve`

    from chatsvc.engine import db, migrations  # noqa: PLC0415

    url = _database_url(_settings())
    try:
        conn = db.connect(url, purpose="chatsvc-cli")
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise click.ClickException(f"cannot connect to {_where(url)}: {reason}") from None
    with conn:
        missing = migrations.pending(conn)
        if missing:
            conn.rollback()
            raise click.ClickException(
                f"the database {_where(url)} lacks chatsvc's migrations {', '.join(missing)}; "
                "run `chatsvc db upgrade` (or `chatsvc serve`) first"
            )
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
@click.option(
    "--skip-model-check",
    is_flag=True,
    help="Start even if litellm's check finds the default model's credentials missing "
    "(for credentials it cannot see, such as a cloud role).",
)
def serve(host: str, port: int, workers: int, skip_model_check: bool) -> None:
    """Serve the app with gunicorn gevent workers (embedded Postgres without DATABASE_URL).

    First it checks the models as `chatsvc models` does, and refuses to start when
    the default model cannot be called (unless --skip-model-check).
    """
    from chatsvc import server  # noqa: PLC0415

    settings = _settings()
    _tools(settings)  # a bad tools file stops here, before anything starts
    try:
        server.check_address(host, port)
    except server.PortInUse as exc:
        raise click.ClickException(str(exc)) from None
    # The built-in offline model alone needs no check. Like migrations, the check
    # runs in a child process (the master must not import litellm before it forks
    # the workers), while the database starts.
    check = None
    if not skip_model_check and (settings.models or settings.model != OFFLINE_MODEL):
        check = subprocess.Popen([sys.executable, "-m", "chatsvc", "models", "--problems"])
    if settings.database_url is None:
        os.environ["DATABASE_URL"] = _database_url(settings, create=True)
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
    if check is not None and check.wait() != 0:
        raise click.ClickException(
            "not starting: the default model cannot be called (see above); "
            "or start with --skip-model-check"
        )
    server.serve(
        host, port, workers, log_format=settings.log_format, metrics_dir=settings.metrics_dir
    )


@main.command("models")
@click.option("--problems", is_flag=True, help="Print only what is wrong (as `serve` does).")
def models_command(problems: bool) -> None:
    """The models clients may choose, checked with litellm (exit status 1 on a problem)."""
    from chatsvc.engine import models  # noqa: PLC0415

    settings = _settings()
    for choice in [] if problems else models.choices(settings):
        click.echo(f"{choice.id}{'  (default)' if choice.default else ''}")
    found = models.check(settings)
    for warning in found.warnings:
        click.echo(f"warning: {warning}", err=True)
    for error in found.errors:
        click.echo(f"error: {error}", err=True)
    if found.errors:
        sys.exit(1)


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

    applied = migrations.upgrade(_database_url(_settings(), create=True))
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
@click.option(
    "--exist-ok",
    is_flag=True,
    help="If the user exists, issue it another token instead (for scripts that are re-run).",
)
def users_create(name: str, admin: bool, token_limit: int | None, exist_ok: bool) -> None:
    """Create a user; prints a new API token as the last line."""
    import psycopg  # noqa: PLC0415

    from chatsvc.engine import users as user_rows  # noqa: PLC0415

    with _connection() as conn:
        try:
            user = user_rows.create_user(conn, name, admin=admin, token_limit=token_limit)
            said = f"created user {user.name} ({user.id})"
        except psycopg.errors.UniqueViolation:
            conn.rollback()
            existing = user_rows.user_by_name(conn, name) if exist_ok else None
            if existing is None:
                raise click.ClickException(
                    f"a user named {name!r} already exists: `chatsvc tokens create {name}` "
                    "issues it another token (or add --exist-ok)"
                ) from None
            user = existing
            said = f"user {user.name} ({user.id}) exists, unchanged; a new token for it"
        except psycopg.errors.CheckViolation:
            raise click.ClickException(
                "a user name is 1-64 letters, digits, '_', '.', '@' or '-'"
            ) from None
        token = user_rows.create_token(conn, user.id)
        conn.commit()
    click.echo(said)
    click.echo(token)


@users.command("disable")
@click.argument("name")
def users_disable(name: str) -> None:
    """Disable a user at once, on every instance: their tokens and sessions get 401, their open
    streams and WebSockets are closed, their streaming answers are cancelled. `users enable`
    undoes all but the cancels."""
    from chatsvc.engine import access  # noqa: PLC0415

    cancelled = _access(lambda conn: access.disable(conn, name))
    click.echo(f"disabled user {name}; cancelled {cancelled} streaming answer(s)")


@users.command("enable")
@click.argument("name")
def users_enable(name: str) -> None:
    """Let a disabled user in again, with the tokens they had."""
    from chatsvc.engine import access  # noqa: PLC0415

    _access(lambda conn: access.enable(conn, name))
    click.echo(f"enabled user {name}")


def _access(change: Callable[[Connection[Any]], T]) -> T:
    """Run an access change in one transaction (committing its NOTIFY with it)."""
    from chatsvc.errors import NotFound  # noqa: PLC0415

    with _connection() as conn:
        try:
            result = change(conn)
        except NotFound as exc:
            raise click.ClickException(exc.message) from None
        conn.commit()
    return result


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


@tokens.command("revoke")
@click.argument("name")
def tokens_revoke(name: str) -> None:
    """Revoke every API token of a user at once, on every instance: their sessions end, their
    open streams and WebSockets are closed. `tokens create` issues a new one."""
    from chatsvc.engine import access  # noqa: PLC0415

    revoked = _access(lambda conn: access.revoke_tokens(conn, name))
    click.echo(f"revoked {revoked} token{'s' if revoked != 1 else ''} of {name}")


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
