"""Single messages: GET /api/messages/{id}, cancel, and the answer's stream."""

from __future__ import annotations

from uuid import UUID

from flask import Response

from chatsvc.engine import commands
from chatsvc.engine import messages as message_rows
from chatsvc.engine.messages import Message
from chatsvc.errors import InvalidRequest, NotFound
from chatsvc.web import sse
from chatsvc.web.api import bp
from chatsvc.web.auth import current_user
from chatsvc.web.context import connection, runtime
from chatsvc.web.declare import route
from chatsvc.web.event_schemas import MESSAGE_EVENTS


@route(bp, "GET", "/messages/<uuid:message_id>", response=Message, errors=(NotFound,))
def get_message(message_id: UUID) -> Message:
    """One message with its true status and content."""
    with connection() as conn:
        return message_rows.get_visible(conn, current_user().id, message_id)


@route(
    bp,
    "POST",
    "/messages/<uuid:message_id>/cancel",
    response=Message,
    status=202,
    errors=(NotFound,),
)
def cancel_message(message_id: UUID) -> Message:
    """Record the intent to cancel an answer; its owner stops within a checkpoint interval."""
    return commands.cancel_message(runtime(), current_user(), message_id)


@route(
    bp,
    "GET",
    "/messages/<uuid:message_id>/stream",
    events=MESSAGE_EVENTS,
    responses={204: "The message has finished and was read to its end."},
    errors=(InvalidRequest, NotFound),
)
def message_stream(message_id: UUID) -> Response:
    """SSE: one answer from an offset to `done`."""
    with connection() as conn:
        message_rows.get_visible(conn, current_user().id, message_id)
    return sse.message_stream(runtime(), message_id)
