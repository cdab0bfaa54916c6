"""Liveness, readiness, metrics and the OpenAPI description (no authentication)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

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
    """Prometheus text format, for this process."""
    rt = runtime()
    stats = rt.checkpointer.stats
    pool = rt.pool.get_stats()
    lines = [
        (
            "chatsvc_streams_owned",
            "gauge",
            "Answers this process is generating.",
            len(rt.checkpointer.streams),
        ),
        (
            "chatsvc_subscribers",
            "gauge",
            "Open SSE/WebSocket followers in this process.",
            rt.hub.subscriber_count,
        ),
        (
            "chatsvc_checkpoint_transactions_total",
            "counter",
            "Checkpoint transactions committed.",
            stats.transactions,
        ),
        (
            "chatsvc_checkpoints_total",
            "counter",
            "Stream checkpoints with new text.",
            stats.checkpoints,
        ),
        ("chatsvc_checkpoint_chars_total", "counter", "Characters committed.", stats.chars),
        (
            "chatsvc_checkpoint_seconds_total",
            "counter",
            "Time spent committing.",
            round(stats.commit_seconds, 6),
        ),
        (
            "chatsvc_answers_finished_total",
            "counter",
            "Answers ended by this process.",
            stats.finished,
        ),
        ("chatsvc_streams_fenced_total", "counter", "Streams lost to another owner.", stats.fenced),
        ("chatsvc_checkpoint_errors_total", "counter", "Failed checkpoint attempts.", stats.errors),
        ("chatsvc_pool_connections", "gauge", "Open pooled connections.", pool.get("pool_size", 0)),
    ]
    text = "".join(
        f"# HELP {name} {help_}\n# TYPE {name} {kind}\n{name} {value}\n"
        for name, kind, help_, value in lines
    )
    return Response(text, mimetype="text/plain; version=0.0.4")


@route(bp, "GET", "/openapi.json", auth="none")
def openapi_json() -> Response:
    """This OpenAPI 3.1 description of the API."""
    return jsonify(openapi.document())
