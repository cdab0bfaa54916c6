"""The caller's room (GET /api/events): what keeps a page's conversation list live."""

from __future__ import annotations

from flask import Response

from chatsvc.web import sse
from chatsvc.web.api import bp
from chatsvc.web.auth import current_user
from chatsvc.web.context import runtime
from chatsvc.web.declare import route
from chatsvc.web.event_schemas import USER_EVENTS


@route(bp, "GET", "/events", events=USER_EVENTS)
def user_events() -> Response:
    """SSE: conversation.created/updated/deleted, stream.started/finished of every visible one."""
    return sse.user_stream(runtime(), current_user().id)
