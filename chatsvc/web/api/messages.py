"""Single messages: GET /api/messages/{id}, cancel, continue, regenerate, edit, and the
answer's stream."""

from __future__ import annotations

from uuid import UUID

from flask import Response

from chatsvc.engine import commands
from chatsvc.engine import messages as message_rows
from chatsvc.engine.messages import Message
from chatsvc.errors import (
    InvalidRequest,
    NotFound,
    StreamActive,
    TokenLimitExceeded,
    ValidationError,
)
from chatsvc.web import schemas, sse
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


TREE_ERRORS = (NotFound, ValidationError, StreamActive, TokenLimitExceeded)


@route(
    bp,
    "POST",
    "/messages/<uuid:message_id>/continue",
    body=schemas.ChooseModel,
    response=Message,
    status=202,
    errors=TREE_ERRORS,
)
def continue_message(message_id: UUID, body: schemas.ChooseModel) -> Message:
    """Stream a stopped answer again, appended at its end (Stop, then Continue: a pause)."""
    return commands.continue_answer(runtime(), current_user(), message_id, model=body.model)


@route(
    bp,
    "POST",
    "/messages/<uuid:message_id>/regenerate",
    body=schemas.ChooseModel,
    response=schemas.Regenerated,
    status=202,
    errors=TREE_ERRORS,
)
def regenerate_message(message_id: UUID, body: schemas.ChooseModel) -> schemas.Regenerated:
    """A new answer beside this one, on a branch that becomes current."""
    sent = commands.regenerate(runtime(), current_user(), message_id, model=body.model)
    answer = sent.exchange.assistant_message
    return schemas.Regenerated(
        assistant_message=answer, stream_url=f"/api/messages/{answer.id}/stream"
    )


@route(
    bp,
    "POST",
    "/messages/<uuid:message_id>/edit",
    body=schemas.EditMessage,
    response=schemas.Exchange,
    status=202,
    responses={
        200: "`client_message_id` was already used in this conversation: the same pair, "
        "and nothing is started."
    },
    errors=TREE_ERRORS,
)
def edit_message(message_id: UUID, body: schemas.EditMessage) -> tuple[schemas.Exchange, int]:
    """A new version of a user message and its answer, on a branch that becomes current."""
    sent = commands.edit(
        runtime(),
        current_user(),
        message_id,
        body.content,
        model=body.model,
        client_message_id=body.client_message_id,
    )
    return schemas.exchange(sent), 202 if sent.created else 200


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
