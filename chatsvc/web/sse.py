"""Server-Sent Events (docs/protocol.md): turning a follower into a text/event-stream response."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from uuid import UUID

from flask import Response, request

from chatsvc import jsonio
from chatsvc.engine.followers import (
    ConversationFollower,
    Follower,
    MessageFollower,
    Out,
    ProjectFollower,
)
from chatsvc.engine.positions import Cursor, Position
from chatsvc.engine.rooms import UserFollower
from chatsvc.engine.runtime import Runtime
from chatsvc.errors import InvalidRequest, Unavailable
from chatsvc.web.auth import authenticate, current_user

log = logging.getLogger(__name__)

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
RETRY = "retry: 1000\n\n"
PING = ": ping\n\n"


def format_event(out: Out) -> str:
    """One SSE event; JSON keeps data on one line whatever the text holds."""
    id_line = f"id: {out.id}\n" if out.id is not None else ""
    return f"event: {out.event}\n{id_line}data: {jsonio.dumps(out.data)}\n\n"


def _respond(follower: Follower, first: list[Out]) -> Response:
    _end_on_revocation(follower)

    def body() -> Iterator[str]:
        # The first yield sends the headers, so the client knows at once it is connected.
        yield RETRY
        try:
            for out in follower.events(first):
                yield PING if out is None else format_event(out)
                # The server asks for the next piece once it has written this one.
                if out is not None and follower.sub is not None:
                    follower.sub.delivered("sse")
        except Unavailable:
            # The database went away mid-stream: end cleanly; the client reconnects
            # with Last-Event-ID after `retry` and resumes where it was.
            log.info("ending an SSE stream: database unavailable")

    response = Response(body(), mimetype="text/event-stream", headers=HEADERS)
    # Runs when the server closes the response, even if the body never started.
    response.call_on_close(follower.close)
    return response


def _end_on_revocation(follower: Follower) -> None:
    """Make the stream end when its user loses access (disabled, tokens revoked) anywhere."""
    assert follower.sub is not None
    try:
        follower.hub.extend(follower.sub, current_user().id)
        # A revocation committed after this request authenticated, before the line
        # above, was not heard: look the credentials up again.
        authenticate()
    except BaseException:
        follower.close()
        raise


def requested_position() -> Position:
    """Last-Event-ID, else ?offset=, else 0; 400 unless an offset or a composite position."""
    header = request.headers.get("Last-Event-ID")
    if header is not None and header.strip():
        return Position.parse(header.strip(), "Last-Event-ID")
    raw = request.args.get("offset")
    if raw is not None:
        return Position.parse(raw, "offset")
    return Position(0)


def message_stream(rt: Runtime, message_id: UUID) -> Response:
    """GET /api/messages/{id}/stream (the caller checked the message is visible)."""
    position = requested_position()
    follower = MessageFollower(rt.sources)
    state, first = follower.open(message_id, position)
    # The end of everything: a bare offset is the end only of an answer of text
    # alone, so a client starting from 0 always receives every part.
    if state.is_terminal and position.at(
        state.content_length, state.reasoning_length, state.tool_version
    ):
        follower.close()
        return Response(status=204, headers=HEADERS)
    return _respond(follower, first)


def conversation_stream(rt: Runtime, conversation_id: UUID) -> Response:
    """GET /api/conversations/{id}/stream (the caller checked the conversation is visible)."""
    raw = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    cursor = Cursor.parse(raw.strip()) if raw and raw.strip() else None
    if cursor is None and request.args.get("offset") is not None:
        raise InvalidRequest("A conversation stream resumes from Last-Event-ID, not ?offset=.")
    follower = ConversationFollower(rt.sources)
    first = follower.open(conversation_id, cursor)
    return _respond(follower, first)


def project_stream(rt: Runtime, project_id: UUID, user_id: UUID) -> Response:
    """GET /api/projects/{id}/events (the caller checked membership)."""
    follower = ProjectFollower(rt.sources)
    return _respond(follower, follower.open(project_id, user_id))


def user_stream(rt: Runtime, user_id: UUID) -> Response:
    """GET /api/events: the caller's room."""
    follower = UserFollower(rt.sources)
    return _respond(follower, follower.open(user_id))
