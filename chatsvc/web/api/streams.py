"""GET /api/streams: the answers streaming now."""

from __future__ import annotations

from chatsvc.engine import status
from chatsvc.engine.status import ActiveStream
from chatsvc.web import schemas
from chatsvc.web.api import bp
from chatsvc.web.auth import current_user
from chatsvc.web.context import connection
from chatsvc.web.declare import route


@route(bp, "GET", "/streams", response=schemas.ActiveStreamList)
def active_streams() -> dict[str, list[ActiveStream]]:
    """Answers streaming now that the caller may see (all of them for an admin)."""
    user = current_user()
    with connection() as conn:
        return {"items": status.active(conn, user.id, everything=user.is_admin)}
