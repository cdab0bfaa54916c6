"""GET /api/usage: tokens used, and the limit."""

from __future__ import annotations

from chatsvc.engine import users
from chatsvc.engine.users import Usage
from chatsvc.web import schemas
from chatsvc.web.api import bp
from chatsvc.web.auth import current_user
from chatsvc.web.context import connection
from chatsvc.web.declare import route


@route(bp, "GET", "/usage", response=schemas.Usage)
def usage() -> Usage:
    """Tokens the caller has used, and their limit."""
    with connection() as conn:
        return users.usage(conn, current_user().id)
