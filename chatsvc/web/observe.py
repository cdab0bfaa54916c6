"""What every request leaves behind: its `X-Request-ID`, the ids in its log lines, its timing.

A request's id is the client's `X-Request-ID` when acceptable (chatsvc/logs.py),
else a new one; it is on the response, on every log line written while the
request is handled (and on gunicorn's access line), and in the request's
environ for the WebSocket upgrade (web/ws.py), whose response Flask does not
write. `chatsvc_http_request_duration_seconds` is observed when the view has
returned: for a stream, that is the time to open it.
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request

from chatsvc import logs, metrics

HEADER = "X-Request-ID"
ENVIRON_KEY = "chatsvc.request_id"
# The route label of a request that matched no URL rule (a 404, a 405).
UNMATCHED = "unmatched"


def init_app(app: Flask) -> None:
    """Give every request an id and time it."""
    app.before_request(_begin)
    app.after_request(_end)


def _begin() -> None:
    rid = logs.request_id(request.headers.get(HEADER))
    g.request_id = rid
    g.started = time.perf_counter()
    request.environ[ENVIRON_KEY] = rid
    # Set, never reset: gevent runs a connection's requests in one greenlet,
    # which writes a stream's body and then gunicorn's access line after this
    # request context is gone; the next request on the connection sets its own.
    logs.REQUEST_ID.set(rid)


def _end(response: Response) -> Response:
    rid = g.get("request_id")
    if rid is None:  # the request failed before _begin ran
        rid = logs.request_id(request.headers.get(HEADER))
    response.headers[HEADER] = rid
    started = g.get("started")
    rule = request.url_rule
    if started is not None and not (rule is not None and rule.websocket):
        metrics.HTTP_SECONDS.labels(
            rule.rule if rule is not None else UNMATCHED, str(response.status_code)
        ).observe(time.perf_counter() - started)
    return response
