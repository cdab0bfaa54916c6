"""Who is calling: Bearer tokens for API clients, an HttpOnly session cookie for browsers."""

from __future__ import annotations

from collections.abc import Callable

from flask import Response, g, jsonify, request

from chatsvc.engine import users
from chatsvc.engine.runtime import Runtime
from chatsvc.engine.users import User
from chatsvc.errors import Unauthorized
from chatsvc.web import schemas
from chatsvc.web.context import connection, runtime, statement
from chatsvc.web.declare import serialise

COOKIE = "chatsvc_session"


def current_user() -> User:
    """The authenticated user of this request (set by `authenticate`)."""
    user: User = g.user
    return user


def authenticate() -> None:
    """Identify the caller by Bearer token, else by session cookie; 401 if neither."""
    g.user = _find(request.headers.get("Authorization"), request.cookies.get(COOKIE), runtime())


def lookup_later() -> Callable[[], User | None]:
    """A lookup of this request's credentials that can run again after the request (a
    WebSocket checks, later, that its user still has access): their user, or None."""
    header, cookie, rt = (
        request.headers.get("Authorization"),
        request.cookies.get(COOKIE),
        runtime(),
    )

    def lookup() -> User | None:
        try:
            return _find(header, cookie, rt)
        except Unauthorized:
            return None

    return lookup


def _find(header: str | None, cookie: str | None, rt: Runtime) -> User:
    if header is not None:
        return _token_user(header, rt)
    if cookie:
        with statement(rt) as conn:
            user = users.user_by_session(conn, cookie)
        if user is None:
            raise Unauthorized("This session has ended; sign in with a token again.")
        return user
    raise Unauthorized()


def _token_user(header: str, rt: Runtime) -> User:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("The Authorization header must be 'Bearer <token>'.")
    with statement(rt) as conn:
        found = users.user_by_token(conn, token.strip())
    if found is None:
        raise Unauthorized("This token is not valid.")
    return found[0]


def page_user() -> User | None:
    """The caller as `authenticate` finds them, or None where the API would answer 401."""
    try:
        authenticate()
    except Unauthorized:
        return None
    return current_user()


def create_session(token: str) -> Response:
    """POST /api/session: trade an API token for an HttpOnly, SameSite=Strict session cookie."""
    with connection() as conn:
        found = users.user_by_token(conn, token)
        if found is None:
            raise Unauthorized("This token is not valid.")
        user, token_id = found
        secret = users.create_session(conn, user.id, token_id)
    response = jsonify(serialise(schemas.Session, {"user": user}))
    response.status_code = 201
    response.set_cookie(
        COOKIE,
        secret,
        max_age=int(users.SESSION_LIFETIME.total_seconds()),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.is_secure,
    )
    return response


def end_session() -> Response:
    """DELETE /api/session: sign out of this browser."""
    cookie = request.cookies.get(COOKIE)
    if cookie:
        with connection() as conn:
            users.delete_session(conn, cookie)
    response = Response(status=204)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Strict")
    return response
