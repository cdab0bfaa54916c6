"""The JSON API under /api (SPEC section 2)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from flask import Blueprint, Response, jsonify, request

from chatsvc.engine import commands, conversations, events, projects, status, users
from chatsvc.engine import messages as message_rows
from chatsvc.engine.conversations import Conversation
from chatsvc.errors import NotFound, wrap_exceptions
from chatsvc.web import auth, sse
from chatsvc.web.auth import current_user
from chatsvc.web.context import runtime
from chatsvc.web.validation import (
    Field,
    json_object,
    query_int,
    query_uuid,
    send_fields,
    text,
    uuid_field,
)

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.before_request
def _authenticate() -> None:
    if request.endpoint in ("api.session", "api.session_delete"):
        return  # signing in needs no session; signing out works even with a stale one
    auth.authenticate()


def _created(body: Any) -> tuple[Response, int]:
    return jsonify(body), 201


# --- session --------------------------------------------------------------------


@bp.post("/session", endpoint="session")
def create_session() -> Response:
    """Exchange a token for a browser session cookie."""
    return auth.create_session()


@bp.delete("/session", endpoint="session_delete")
def delete_session() -> Response:
    """End the browser session."""
    return auth.end_session()


@bp.get("/me")
def me() -> Response:
    """The calling user."""
    return jsonify(current_user().to_json())


# --- projects -------------------------------------------------------------------


@bp.post("/projects")
def create_project() -> tuple[Response, int]:
    """Create a project; the caller becomes its first member."""
    body = json_object({"name": Field(text(1, 200), required=True)})
    with wrap_exceptions(), runtime().pool.connection() as conn:
        project = projects.create_project(conn, current_user().id, body["name"])
    return _created(project.to_json())


@bp.get("/projects")
def list_projects() -> Response:
    """Projects the caller belongs to."""
    with wrap_exceptions(), runtime().pool.connection() as conn:
        found = projects.list_projects(conn, current_user().id)
    return jsonify({"items": [p.to_json() for p in found]})


@bp.get("/projects/<uuid:project_id>")
def get_project(project_id: UUID) -> Response:
    """One project the caller belongs to."""
    with wrap_exceptions(), runtime().pool.connection() as conn:
        project = projects.get_project(conn, current_user().id, project_id)
    if project is None:
        raise NotFound("No such project.")
    return jsonify(project.to_json())


@bp.post("/projects/<uuid:project_id>/members")
def add_member(project_id: UUID) -> tuple[Response, int]:
    """Add a member by user name (any member may)."""
    body = json_object({"user": Field(text(1, 64), required=True)})
    with wrap_exceptions(), runtime().pool.connection() as conn:
        if projects.get_project(conn, current_user().id, project_id) is None:
            raise NotFound("No such project.")
        member = users.user_by_name(conn, body["user"])
        if member is None:
            raise NotFound(f"No user named {body['user']!r}.")
        added = projects.add_member(conn, project_id, member.id)
        project = projects.get_project(conn, current_user().id, project_id)
        if added:
            events.send(conn, [events.project_event(project_id, "member.added", user_id=member.id)])
    assert project is not None
    return jsonify(project.to_json()), 201 if added else 200


@bp.delete("/projects/<uuid:project_id>/members/<name>")
def remove_member(project_id: UUID, name: str) -> Response:
    """Remove a member by user name (any member may, themselves included)."""
    with wrap_exceptions(), runtime().pool.connection() as conn:
        if projects.get_project(conn, current_user().id, project_id) is None:
            raise NotFound("No such project.")
        member = users.user_by_name(conn, name)
        if member is None or not projects.remove_member(conn, project_id, member.id):
            raise NotFound(f"{name!r} is not a member of this project.")
        # Open project streams of the removed member end: they get nothing more.
        events.send(conn, [events.project_event(project_id, "member.removed", user_id=member.id)])
    return Response(status=204)


@bp.get("/projects/<uuid:project_id>/events")
def project_events(project_id: UUID) -> Response:
    """SSE: the project room (conversation.created/deleted, stream.started/finished)."""
    rt = runtime()
    with wrap_exceptions(), rt.pool.connection() as conn:
        if projects.get_project(conn, current_user().id, project_id) is None:
            raise NotFound("No such project.")
    return sse.project_stream(rt, project_id, current_user().id)


# --- conversations --------------------------------------------------------------


def _visible_conversation(conn: Any, conversation_id: UUID) -> Conversation:
    return commands.visible(conn, current_user(), conversation_id)


@bp.post("/conversations")
def create_conversation() -> tuple[Response, int]:
    """Create a conversation, private or in a project the caller belongs to."""
    body = json_object(
        {
            "project_id": Field(uuid_field),
            "title": Field(text(0, 200)),
        }
    )
    user = current_user()
    with wrap_exceptions(), runtime().pool.connection() as conn:
        project_id = body["project_id"]
        if project_id is not None and projects.get_project(conn, user.id, project_id) is None:
            raise NotFound("No such project.")
        conversation = conversations.create(conn, user.id, project_id, body["title"] or "")
        if project_id is not None:
            events.send(
                conn,
                [
                    events.project_event(
                        project_id,
                        "conversation.created",
                        conversation_id=conversation.id,
                        title=conversation.title,
                        user_id=user.id,
                        created_at=conversation.created_at,
                    )
                ],
            )
    return _created(conversation.to_json())


@bp.get("/conversations")
def list_conversations() -> Response:
    """Visible conversations, newest first, each with is_streaming; page with ?before=."""
    limit = query_int("limit", 50, 1, 200)
    before = query_uuid("before")
    project_id = query_uuid("project_id")
    with wrap_exceptions(), runtime().pool.connection() as conn:
        found = conversations.page(
            conn, current_user().id, project_id=project_id, before=before, limit=limit
        )
    next_before = found[-1].id if len(found) == limit else None
    return jsonify({"items": [c.to_json() for c in found], "next_before": next_before})


@bp.get("/conversations/<uuid:conversation_id>")
def get_conversation(conversation_id: UUID) -> Response:
    """A conversation and its messages, streaming answers with their checkpointed text."""
    with wrap_exceptions(), runtime().pool.connection() as conn:
        conversation = _visible_conversation(conn, conversation_id)
        rows = message_rows.in_conversation(conn, conversation_id)
    return jsonify({**conversation.to_json(), "messages": [m.to_json() for m in rows]})


@bp.delete("/conversations/<uuid:conversation_id>")
def delete_conversation(conversation_id: UUID) -> Response:
    """Delete a conversation, cancelling its active answer first."""
    with wrap_exceptions(), runtime().pool.connection() as conn:
        conversation = _visible_conversation(conn, conversation_id)
        active = message_rows.active_in(conn, conversation_id)
        outbox: list[events.Event] = []
        if active is not None:
            message_rows.request_cancel(conn, active.id)
            outbox.append(
                events.Finished(
                    conversation_id, active.id, "cancelled", active.content_length, None, None
                )
            )
        conversations.delete(conn, conversation_id)
        outbox.append(events.ConversationDeleted(conversation_id))
        if conversation.project_id is not None:
            outbox.append(
                events.project_event(
                    conversation.project_id, "conversation.deleted", conversation_id=conversation_id
                )
            )
        events.send(conn, outbox)
    return Response(status=204)


@bp.post("/conversations/<uuid:conversation_id>/messages")
def send_message(conversation_id: UUID) -> tuple[Response, int]:
    """Store the user message and a streaming answer, then generate it in the background."""
    rt = runtime()
    body = json_object(send_fields(rt.settings))
    sent = commands.send(
        rt,
        current_user(),
        conversation_id,
        body["content"],
        model=body["model"],
        client_message_id=body["client_message_id"],
    )
    return jsonify(sent.to_json()), 202 if sent.created else 200


@bp.get("/conversations/<uuid:conversation_id>/status")
def conversation_status(conversation_id: UUID) -> Response:
    """Whether the conversation is streaming, and its latest answer's state."""
    with wrap_exceptions(), runtime().pool.connection() as conn:
        _visible_conversation(conn, conversation_id)
        found = status.conversation_status(conn, conversation_id)
    assert found is not None
    return jsonify(found.to_json())


@bp.post("/conversations/<uuid:conversation_id>/cancel")
def cancel_conversation(conversation_id: UUID) -> tuple[Response, int]:
    """Cancel the active answer (idempotent: with none, returns the latest answer)."""
    message = commands.cancel_conversation(runtime(), current_user(), conversation_id)
    return jsonify(message.to_json()), 202


@bp.get("/conversations/<uuid:conversation_id>/stream")
def conversation_stream(conversation_id: UUID) -> Response:
    """SSE: the whole conversation, long-lived."""
    rt = runtime()
    with wrap_exceptions(), rt.pool.connection() as conn:
        _visible_conversation(conn, conversation_id)
    return sse.conversation_stream(rt, conversation_id)


# --- messages -------------------------------------------------------------------


@bp.get("/messages/<uuid:message_id>")
def get_message(message_id: UUID) -> Response:
    """One message with its true status and content."""
    with wrap_exceptions(), runtime().pool.connection() as conn:
        message = message_rows.get(conn, current_user().id, message_id)
    if message is None:
        raise NotFound("No such message.")
    return jsonify(message.to_json())


@bp.post("/messages/<uuid:message_id>/cancel")
def cancel_message(message_id: UUID) -> tuple[Response, int]:
    """Record the intent to cancel an answer; its owner stops within a checkpoint interval."""
    message = commands.cancel_message(runtime(), current_user(), message_id)
    return jsonify(message.to_json()), 202


@bp.get("/messages/<uuid:message_id>/stream")
def message_stream(message_id: UUID) -> Response:
    """SSE: one answer from an offset to `done`."""
    rt = runtime()
    with wrap_exceptions(), rt.pool.connection() as conn:
        if message_rows.get(conn, current_user().id, message_id) is None:
            raise NotFound("No such message.")
    return sse.message_stream(rt, message_id)


# --- streams and usage ----------------------------------------------------------


@bp.get("/streams")
def active_streams() -> Response:
    """Answers streaming now that the caller may see (all of them for an admin)."""
    user = current_user()
    with wrap_exceptions(), runtime().pool.connection() as conn:
        found = status.active(conn, user.id, everything=user.is_admin)
    return jsonify({"items": [s.to_json() for s in found]})


@bp.get("/usage")
def usage() -> Response:
    """Tokens the caller has used, and their limit."""
    with wrap_exceptions(), runtime().pool.connection() as conn:
        used = users.usage(conn, current_user().id)
    return jsonify(used.to_json())
