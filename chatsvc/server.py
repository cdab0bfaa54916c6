"""`chatsvc serve`: gunicorn with gevent workers, configured for long-lived streams.

This module runs in gunicorn's master process and must not import psycopg (or
anything that does): workers are forked from the master, and psycopg chooses
its blocking wait function at import unless gevent has patched first.
"""

from __future__ import annotations

import errno
import gc
import logging
import socket
import sys
from typing import Any

import gevent
from gunicorn.app.base import BaseApplication
from gunicorn.workers.ggevent import GeventWorker

log = logging.getLogger(__name__)

# Each open SSE stream is one greenlet and one socket; gunicorn's default of
# 1000 connections per worker would cap the streams a worker can hold.
WORKER_CONNECTIONS = 10_000


def gunicorn_options(host: str, port: int, workers: int, **overrides: Any) -> dict[str, Any]:
    """The gunicorn settings chatsvc runs with."""
    options: dict[str, Any] = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "chatsvc.server.Worker",
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


class Worker(GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker, handing its streams over before it stops.

    SIGTERM (a graceful stop, a rolling deploy) makes gunicorn stop accepting and
    wait for open requests; chatsvc then commits its streams' text, releases their
    leases so that another process resumes them at once, and ends its SSE streams
    cleanly so that clients reconnect elsewhere. SIGINT/SIGQUIT (fast stop) do the
    same before exiting.
    """

    _quitting = False

    def load_wsgi(self) -> None:
        super().load_wsgi()
        # The app loads litellm: some 400,000 long-lived objects that every full
        # garbage collection would walk, stalling all the worker's streams for
        # ~200 ms at a time. Freezing moves them out of the collector's sight.
        gc.collect()
        gc.freeze()

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        gevent.spawn(self._hand_over)  # not inside the signal handler

    def handle_quit(self, sig: int, frame: Any) -> None:
        # Ctrl-C reaches a worker twice: SIGINT from the terminal, then SIGQUIT from
        # the master. gunicorn exits (SystemExit in a spawned greenlet) once per
        # signal, and the second SystemExit lands in whatever runs at exit, such as
        # litellm's atexit hook, printing a traceback that reads like a crash.
        if self._quitting:
            return
        self._quitting = True
        gevent.spawn(self._hand_over_then, super().handle_quit, sig, frame)

    def _hand_over_then(self, then: Any, *args: Any) -> None:
        self._hand_over()
        then(*args)

    def _hand_over(self) -> None:
        runtime = getattr(getattr(self, "wsgi", None), "extensions", {}).get("chatsvc")
        if runtime is None:
            return
        try:
            runtime.shutdown()
        except Exception:
            log.exception("hand-over on shutdown failed; leases will expire instead")


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


class PortInUse(Exception):
    """The address to serve on is taken (or cannot be used), in one line."""


def check_address(host: str, port: int) -> None:
    """Raise PortInUse unless gunicorn will be able to listen on host:port.

    gunicorn would retry for five seconds, logging two lines a second, and end
    with "Can't connect"; checking first gives one line saying what to do.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PortInUse(f"cannot serve on {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As gunicorn does: a port whose last connections are in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(f"port {port} is in use on {host}; try --port") from None
            raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def serve(host: str, port: int, workers: int) -> None:
    """Run gunicorn in this process until it is stopped."""
    if "psycopg" in sys.modules:
        raise RuntimeError("the gunicorn master must not import psycopg before forking workers")
    Server(gunicorn_options(host, port, workers)).run()
