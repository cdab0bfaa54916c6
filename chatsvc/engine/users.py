"""Users, their API tokens and browser sessions (rows only; the caller owns the transaction)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from psycopg import Connection, Cursor
from psycopg.rows import class_row

from chatsvc.engine.statements import Statement

TOKEN_PREFIX = "csk_"
SESSION_LIFETIME = timedelta(days=30)


@dataclass(frozen=True)
class User:
    """An account; `token_limit` is None when unlimited."""

    id: UUID
    name: str
    is_admin: bool
    token_limit: int | None
    created_at: datetime


@dataclass(frozen=True)
class Usage:
    """Tokens a user has used, and their limit."""

    prompt_tokens: int
    completion_tokens: int
    token_limit: int | None

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def exhausted(self) -> bool:
        """Whether the user may not start another answer."""
        return self.token_limit is not None and self.total_tokens >= self.token_limit


def new_secret(prefix: str = TOKEN_PREFIX) -> str:
    """A fresh random token (256 bits)."""
    return prefix + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> bytes:
    """The stored form of a token or session secret."""
    return hashlib.sha256(secret.encode()).digest()


_USER_COLUMNS = "u.id, u.name, u.is_admin, u.token_limit, u.created_at"

INSERT_USER = f"""
INSERT INTO users AS u (name, is_admin, token_limit) VALUES (%s, %s, %s)
RETURNING {_USER_COLUMNS}
"""


def create_user(conn: Connection[Any], name: str, *, admin: bool, token_limit: int | None) -> User:
    """Insert a user."""
    cur = conn.cursor(row_factory=class_row(User))
    user = cur.execute(INSERT_USER, (name, admin, token_limit)).fetchone()
    assert user is not None
    return user


SELECT_USER_BY_NAME = f"SELECT {_USER_COLUMNS} FROM users u WHERE u.name = %s"


def user_by_name(conn: Connection[Any], name: str) -> User | None:
    """The user with this name, if any."""
    cur = conn.cursor(row_factory=class_row(User))
    return cur.execute(SELECT_USER_BY_NAME, (name,)).fetchone()


INSERT_TOKEN = "INSERT INTO api_tokens (user_id, token_hash) VALUES (%s, %s)"


def create_token(conn: Connection[Any], user_id: UUID) -> str:
    """Issue a new API token for a user; only its hash is stored."""
    token = new_secret()
    conn.execute(INSERT_TOKEN, (user_id, hash_secret(token)))
    return token


SELECT_USER_BY_TOKEN = f"""
SELECT {_USER_COLUMNS}, t.id AS token_id
FROM api_tokens t JOIN users u ON u.id = t.user_id
WHERE t.token_hash = %s AND u.disabled_at IS NULL
"""


def user_by_token(conn: Connection[Any], token: str) -> tuple[User, UUID] | None:
    """The (enabled) user holding this API token, and the token's id."""
    row = conn.execute(SELECT_USER_BY_TOKEN, (hash_secret(token),)).fetchone()
    if row is None:
        return None
    return User(*row[:5]), row[5]


INSERT_SESSION = """
INSERT INTO sessions (secret_hash, user_id, token_id, expires_at)
VALUES (%s, %s, %s, now() + %s)
"""


def create_session(conn: Connection[Any], user_id: UUID, token_id: UUID) -> str:
    """Open a browser session; returns the cookie secret."""
    secret = new_secret("css_")
    conn.execute(INSERT_SESSION, (hash_secret(secret), user_id, token_id, SESSION_LIFETIME))
    return secret


SELECT_USER_BY_SESSION = f"""
SELECT {_USER_COLUMNS}
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.secret_hash = %s AND s.expires_at > now() AND u.disabled_at IS NULL
"""


def user_by_session(conn: Connection[Any], secret: str) -> User | None:
    """The (enabled) user of a live browser session."""
    cur = conn.cursor(row_factory=class_row(User))
    return cur.execute(SELECT_USER_BY_SESSION, (hash_secret(secret),)).fetchone()


DELETE_SESSION = "DELETE FROM sessions WHERE secret_hash = %s"


def delete_session(conn: Connection[Any], secret: str) -> None:
    """End a browser session."""
    conn.execute(DELETE_SESSION, (hash_secret(secret),))


SET_DISABLED = """
UPDATE users SET disabled_at = CASE WHEN %(disabled)s THEN coalesce(disabled_at, now()) END
WHERE name = %(name)s
RETURNING id
"""


def set_disabled(conn: Connection[Any], name: str, disabled: bool) -> UUID | None:
    """Disable (or enable again) the user of this name; their id, or None if there is none."""
    row = conn.execute(SET_DISABLED, {"name": name, "disabled": disabled}).fetchone()
    return None if row is None else UUID(str(row[0]))


DELETE_TOKENS = "DELETE FROM api_tokens WHERE user_id = %s"


def delete_tokens(conn: Connection[Any], user_id: UUID) -> int:
    """Delete every API token of a user, and so (by cascade) every session; how many."""
    return conn.execute(DELETE_TOKENS, (user_id,)).rowcount


SELECT_USAGE = (
    "SELECT prompt_tokens, completion_tokens, token_limit FROM user_usage WHERE user_id = %s"
)


def usage_statement(user_id: UUID) -> Statement[Usage]:
    """Tokens used by a user across all LLM calls made for them (totals plus pending)."""
    return Statement(SELECT_USAGE, (user_id,), _usage)


def _usage(cur: Cursor[Any]) -> Usage:
    row = cur.fetchone()
    if row is None:
        return Usage(0, 0, None)
    return Usage(int(row[0]), int(row[1]), row[2])


def usage(conn: Connection[Any], user_id: UUID) -> Usage:
    """Tokens used by a user across all LLM calls made for them (totals plus pending)."""
    return usage_statement(user_id).run(conn)
