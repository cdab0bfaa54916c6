"""GET /api/models: the models a client may choose."""

from __future__ import annotations

from chatsvc.engine import models
from chatsvc.engine.models import Choice
from chatsvc.web import schemas
from chatsvc.web.api import bp
from chatsvc.web.context import runtime
from chatsvc.web.declare import route


@route(bp, "GET", "/models", response=schemas.ModelList)
def list_models() -> dict[str, list[Choice]]:
    """The models a client may choose; the default one answers when a send names none."""
    return {"items": models.choices(runtime().settings)}
