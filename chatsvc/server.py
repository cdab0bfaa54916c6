"""`chatsvc serve`: gunicorn with gevent workers, configured for long-lived streams.

This module runs in gunicorn's master process and must not import psycopg (or
anything that does): workers are forked from the master, and psycopg chooses
its blocking wait function at import unless gevent has patched first.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from gunicorn.app.base import BaseApplication

log = logging.getLogger(__name__)

# Each open SSE stream is one greenlet and one socket; gunicorn's default of
# 1000 connections per worker would cap the streams a worker can hold.
WORKER_CONNECTIONS = 10_000


def gunicorn_options(host: str, port: int, workers: int, **overrides: Any) -> dict[str, Any]:
    """The gunicorn settings chatsvc runs with."""
    options: dict[str, Any] = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "gevent",
        "worker_connections": WORKER_CONNECTIONS,
        "preload_app": False,
        "timeout": 30,
        "graceful_timeout": 20,
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "chatsvc",
        # Several instances may run on one host (tests, side-by-side deploys);
        # a shared control socket path would make them collide.
        "control_socket_disable": True,
    }
    options.update(overrides)
    return options


class Server(BaseApplication):  # type: ignore[misc]
    """gunicorn, configured in code; the app is imported in each worker after gevent patched it."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from chatsvc.wsgi import app  # noqa: PLC0415 - must happen in the worker

        return app


def serve(host: str, port: int, workers: int) -> None:
    """Run gunicorn in this process until it is stopped."""
    if "psycopg" in sys.modules:
        raise RuntimeError("the gunicorn master must not import psycopg before forking workers")
    Server(gunicorn_options(host, port, workers)).run()
