"""Projects and their members, and the project room (GET /api/projects/{id}/events)."""

from __future__ import annotations

from uuid import UUID

from flask import Response

from chatsvc.engine import commands, projects
from chatsvc.engine.projects import Project
from chatsvc.errors import NotFound
from chatsvc.web import schemas, sse
from chatsvc.web.api import bp
from chatsvc.web.auth import current_user
from chatsvc.web.context import connection, runtime
from chatsvc.web.declare import route
from chatsvc.web.event_schemas import PROJECT_EVENTS


@route(bp, "POST", "/projects", body=schemas.CreateProject, response=schemas.Project, status=201)
def create_project(body: schemas.CreateProject) -> Project:
    """Create a project; the caller becomes its first member."""
    with connection() as conn:
        return projects.create_project(conn, current_user().id, body.name)


@route(bp, "GET", "/projects", response=schemas.ProjectList)
def list_projects() -> dict[str, list[Project]]:
    """Projects the caller belongs to."""
    with connection() as conn:
        return {"items": projects.list_projects(conn, current_user().id)}


@route(bp, "GET", "/projects/<uuid:project_id>", response=schemas.Project, errors=(NotFound,))
def get_project(project_id: UUID) -> Project:
    """One project the caller belongs to."""
    with connection() as conn:
        return projects.get_member_project(conn, current_user().id, project_id)


@route(
    bp,
    "POST",
    "/projects/<uuid:project_id>/members",
    body=schemas.AddMember,
    response=schemas.Project,
    status=201,
    responses={200: "Already a member; the project, unchanged."},
    errors=(NotFound,),
)
def add_member(project_id: UUID, body: schemas.AddMember) -> tuple[Project, int]:
    """Add a member by user name (any member may)."""
    with connection() as conn:
        project, added = commands.add_member(conn, current_user(), project_id, body.user)
    return project, 201 if added else 200


@route(bp, "DELETE", "/projects/<uuid:project_id>/members/<name>", status=204, errors=(NotFound,))
def remove_member(project_id: UUID, name: str) -> None:
    """Remove a member by user name (any member may, themselves included)."""
    with connection() as conn:
        commands.remove_member(conn, current_user(), project_id, name)


@route(bp, "GET", "/projects/<uuid:project_id>/events", events=PROJECT_EVENTS, errors=(NotFound,))
def project_events(project_id: UUID) -> Response:
    """SSE: the project room (conversation.created/deleted, stream.started/finished)."""
    with connection() as conn:
        projects.get_member_project(conn, current_user().id, project_id)
    return sse.project_stream(runtime(), project_id, current_user().id)
