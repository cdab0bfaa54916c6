"""Signing in and out: POST/DELETE /api/session, and GET /api/me."""

from __future__ import annotations

from flask import Response

from chatsvc.engine.users import User
from chatsvc.errors import Unauthorized, Unavailable
from chatsvc.web import auth, schemas
from chatsvc.web.api import bp
from chatsvc.web.declare import route


@route(
    bp,
    "POST",
    "/session",
    body=schemas.CreateSession,
    response=schemas.Session,
    status=201,
    errors=(Unauthorized, Unavailable),
    auth="none",
)
def create_session(body: schemas.CreateSession) -> Response:
    """Exchange an API token for a browser session cookie."""
    return auth.create_session(body.token)


@route(bp, "DELETE", "/session", status=204, auth="optional")
def delete_session() -> Response:
    """End the browser session (works even when it has already ended)."""
    return auth.end_session()


@route(bp, "GET", "/me", response=schemas.User)
def me() -> User:
    """The calling user."""
    return auth.current_user()
