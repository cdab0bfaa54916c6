"""The JSON API under /api (docs/api.md), one module per resource.

Each route is declared once with `declare.route`, in the module named after the
resource it serves: session, projects, conversations, events, messages, streams,
models, usage, and chat (the AI SDK transport).
"""

from __future__ import annotations

from flask import Blueprint, request

from chatsvc.web import auth, declare

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.before_request
def _authenticate() -> None:
    if declare.requires_auth(request.endpoint):
        auth.authenticate()


# The resource modules register their routes on `bp` when imported.
from chatsvc.web.api import (  # noqa: E402
    chat,
    conversations,
    events,
    messages,
    models,
    projects,
    session,
    streams,
    usage,
)

__all__ = [
    "bp",
    "chat",
    "conversations",
    "events",
    "messages",
    "models",
    "projects",
    "session",
    "streams",
    "usage",
]
