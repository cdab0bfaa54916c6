"""The pages for browsers (docs/api.md, "Pages"): the conversation list and the conversation page.

A page is rendered from the database on the server, so a direct URL shows the true
state, including the text so far of an answer still being written; static/chat.js
then follows the conversation stream from exactly that state. Pages only read:
everything that changes data goes through the JSON API, with the session cookie.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from uuid import UUID

from flask import Blueprint, Response, render_template, url_for

from chatsvc.engine import conversations
from chatsvc.engine import messages as message_rows
from chatsvc.errors import ApiError, NotFound
from chatsvc.web import auth, schemas
from chatsvc.web.context import connection
from chatsvc.web.declare import parse_query

bp = Blueprint("web", __name__)

PAGE_SIZE = 50
STATIC = Path(__file__).parent / "static"

# No inline script or style anywhere, so the policy can forbid them: even if some
# text escaped as markup, it could not run.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@cache
def _asset_version(filename: str) -> str:
    return hashlib.sha256((STATIC / filename).read_bytes()).hexdigest()[:12]


@bp.app_template_global()
def asset_url(filename: str) -> str:
    """A static file's URL, versioned by its content so a deploy is never served stale."""
    return url_for("static", filename=filename, v=_asset_version(filename))


@bp.after_request
def _page_headers(response: Response) -> Response:
    # A page shows live state: a cached copy (or the back button) must not show an old one.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@bp.errorhandler(ApiError)
def _error_page(error: ApiError) -> tuple[str, int, dict[str, str]]:
    return render_template("error.html", error=error), error.status, error.headers


def _sign_in() -> tuple[str, int]:
    # 200, not 401: this page is the way in. (Its forms say method="post" so that,
    # should the script not load, a token never ends up in a URL.)
    return render_template("sign_in.html"), 200


@bp.get("/")
def index() -> str | tuple[str, int]:
    """The caller's conversations, newest first, and a way to start one."""
    user = auth.page_user()
    if user is None:
        return _sign_in()
    before = parse_query(schemas.PageQuery).before
    with connection() as conn:
        found = conversations.page(conn, user.id, project_id=None, before=before, limit=PAGE_SIZE)
    older = found[-1].id if len(found) == PAGE_SIZE else None
    return render_template("index.html", user=user, conversations=found, older=older)


@bp.get("/c/<conversation_id>")
def conversation(conversation_id: str) -> str | tuple[str, int]:
    """One conversation as the database has it now; the page then follows it live."""
    user = auth.page_user()
    if user is None:
        return _sign_in()
    try:
        key = UUID(conversation_id)
    except ValueError:
        raise NotFound("No such conversation.") from None
    with connection() as conn:
        found = conversations.get_visible(conn, user.id, key)
        rows = message_rows.current_branch(conn, key)
    # The stream resumes right after what was rendered: the last message, at its length.
    cursor = f"{rows[-1].id}:{rows[-1].content_length}" if rows else ""
    return render_template(
        "conversation.html", user=user, conversation=found, messages=rows, cursor=cursor
    )
