"""Liveness, readiness, metrics and the OpenAPI description (no authentication)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from chatsvc import metrics as chatsvc_metrics
from chatsvc.engine import migrations
from chatsvc.errors import Unavailable
from chatsvc.web import openapi
from chatsvc.web.context import connection, runtime
from chatsvc.web.declare import route
from chatsvc.web.schemas import Health

bp = Blueprint("health", __name__)


@route(bp, "GET", "/healthz", response=Health, auth="none")
def healthz() -> Health:
    """Liveness: the process is alive."""
    return Health(status="ok")


@route(bp, "GET", "/readyz", response=Health, errors=(Unavailable,), auth="none")
def readyz() -> Health:
    """Readiness: the database answers, migrations are current, and events are being received."""
    rt = runtime()
    if rt.hub.closing:
        raise Unavailable("This server is shutting down.")
    if rt.pressure.overloaded:
        raise Unavailable("This worker is too busy to start answers (its event loop lags).")
    with connection(rt, timeout=2) as conn:
        missing = migrations.pending(conn)
    if missing:
        raise Unavailable(
            f"Migrations not applied: {', '.join(missing)}; run 'chatsvc db upgrade'."
        )
    if not rt.listener.connected.is_set():
        raise Unavailable("Not yet listening for events.")
    return Health(status="ready")


@route(bp, "GET", "/metrics", media_type="text/plain", auth="none")
def metrics() -> Response:
    """Prometheus text format, for every worker of this instance (docs/operating.md)."""
    text, content_type = chatsvc_metrics.exposition(runtime().settings.metrics_dir)
    return Response(text, content_type=content_type)


@route(bp, "GET", "/openapi.json", auth="none")
def openapi_json() -> Response:
    """This OpenAPI 3.1 description of the API."""
    return jsonify(openapi.document())
