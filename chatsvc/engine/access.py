"""Taking a user's access away (and giving it back), on every instance at once.

Each command changes the rows and NOTIFYs an `AccessRevoked` in one
transaction: requests are refused from the commit on (the token and session
lookups skip disabled users and find no deleted tokens), and every process ends
that user's open streams and sockets when the event reaches it. Disabling also
cancels the user's streaming answers; revoking tokens, which may be a key
rotation, leaves them running.
"""

from __future__ import annotations

from typing import Any

from psycopg import Connection

from chatsvc.engine import events, users
from chatsvc.errors import NotFound

# The trigger chatsvc_notify_cancel tells each answer's owner, as for any cancel.
CANCEL_ANSWERS = """
UPDATE messages SET cancel_requested_at = now()
WHERE user_id = %s AND status = 'streaming' AND cancel_requested_at IS NULL
"""


def disable(conn: Connection[Any], name: str) -> int:
    """Disable a user: their tokens and sessions stop working, their open streams end, and
    the answers they started are cancelled (how many)."""
    user_id = users.set_disabled(conn, name, disabled=True)
    if user_id is None:
        raise NotFound(f"No user named {name!r}.")
    events.send(conn, [events.AccessRevoked(user_id)])
    return conn.execute(CANCEL_ANSWERS, (user_id,)).rowcount


def enable(conn: Connection[Any], name: str) -> None:
    """Let a disabled user in again, with the tokens they had."""
    if users.set_disabled(conn, name, disabled=False) is None:
        raise NotFound(f"No user named {name!r}.")


def revoke_tokens(conn: Connection[Any], name: str) -> int:
    """Delete every token of a user (their sessions go with them); how many there were."""
    user = users.user_by_name(conn, name)
    if user is None:
        raise NotFound(f"No user named {name!r}.")
    revoked = users.delete_tokens(conn, user.id)
    events.send(conn, [events.AccessRevoked(user.id)])
    return revoked
