"""Projects and their members (rows only; the caller owns the transaction)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import Connection
from psycopg.rows import class_row

from chatsvc.errors import NotFound


@dataclass(frozen=True)
class Project:
    """A shared space: its conversations are visible to every member."""

    id: UUID
    name: str
    created_by: UUID
    created_at: datetime
    members: list[str]


_PROJECT_COLUMNS = """p.id, p.name, p.created_by, p.created_at,
    ARRAY(SELECT u.name FROM project_members pm JOIN users u ON u.id = pm.user_id
          WHERE pm.project_id = p.id ORDER BY pm.added_at, u.name) AS members"""

INSERT_PROJECT = """
WITH p AS (INSERT INTO projects (name, created_by) VALUES (%(name)s, %(user)s) RETURNING id)
INSERT INTO project_members (project_id, user_id) SELECT id, %(user)s FROM p RETURNING project_id
"""


def create_project(conn: Connection[Any], user_id: UUID, name: str) -> Project:
    """Create a project with its creator as the first member."""
    row = conn.execute(INSERT_PROJECT, {"name": name, "user": user_id}).fetchone()
    assert row is not None
    project = get_project(conn, user_id, row[0])
    assert project is not None
    return project


SELECT_PROJECT = f"""
SELECT {_PROJECT_COLUMNS} FROM projects p
WHERE p.id = %(id)s
  AND EXISTS (SELECT 1 FROM project_members m WHERE m.project_id = p.id AND m.user_id = %(user)s)
"""


def get_project(conn: Connection[Any], user_id: UUID, project_id: UUID) -> Project | None:
    """A project the user is a member of."""
    cur = conn.cursor(row_factory=class_row(Project))
    return cur.execute(SELECT_PROJECT, {"id": project_id, "user": user_id}).fetchone()


def get_member_project(conn: Connection[Any], user_id: UUID, project_id: UUID) -> Project:
    """A project the user is a member of, or NotFound."""
    project = get_project(conn, user_id, project_id)
    if project is None:
        raise NotFound("No such project.")
    return project


SELECT_PROJECTS = f"""
SELECT {_PROJECT_COLUMNS} FROM projects p
JOIN project_members m ON m.project_id = p.id AND m.user_id = %s
ORDER BY p.created_at DESC, p.id DESC
"""


def list_projects(conn: Connection[Any], user_id: UUID) -> list[Project]:
    """Projects the user belongs to, newest first."""
    cur = conn.cursor(row_factory=class_row(Project))
    return cur.execute(SELECT_PROJECTS, (user_id,)).fetchall()


INSERT_MEMBER = """
INSERT INTO project_members (project_id, user_id) VALUES (%s, %s)
ON CONFLICT DO NOTHING RETURNING added_at
"""


def add_member(conn: Connection[Any], project_id: UUID, user_id: UUID) -> bool:
    """Add a member; False when they already were one."""
    return conn.execute(INSERT_MEMBER, (project_id, user_id)).fetchone() is not None


DELETE_MEMBER = "DELETE FROM project_members WHERE project_id = %s AND user_id = %s RETURNING 1"


def remove_member(conn: Connection[Any], project_id: UUID, user_id: UUID) -> bool:
    """Remove a member; False when they were not one."""
    return conn.execute(DELETE_MEMBER, (project_id, user_id)).fetchone() is not None
