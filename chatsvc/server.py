"""`chatsvc serve`: gunicorn with gevent workers, configured for long-lived streams.

This module runs in gunicorn's master process and must not import psycopg (or
anything that does): workers are forked from the master, and psycopg chooses
its blocking wait function at import unless gevent has patched first.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import gevent
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger
from gunicorn.workers.ggevent import GeventWorker

from chatsvc import logs

log = logging.getLogger(__name__)

# The environment variable prometheus-client reads in every process of an instance.
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# Each open SSE stream is one greenlet and one socket; gunicorn's default of
# 1000 connections per worker would cap the streams a worker can hold.
WORKER_CONNECTIONS = 10_000


def gunicorn_options(
    host: str, port: int, workers: int, *, log_format: str = "text", **overrides: Any
) -> dict[str, Any]:
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
        # Every line of the master and the workers goes through chatsvc's logging
        # (chatsvc/logs.py), gunicorn's own included; access lines carry the request id.
        "logconfig_dict": logs.config(log_format),
        "logger_class": "chatsvc.server.AccessLogger",
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "chatsvc",
        # Several instances may run on one host (tests, side-by-side deploys);
        # a shared control socket path would make them collide.
        "control_socket_disable": True,
    }
    options.update(overrides)
    return options


class AccessLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, writing one access line per request with its `request_id`."""

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        """`GET /path 200 1.2 ms`, with the request id, method, path, status and duration."""
        if not self.access_log_enabled:
            return
        request_id = next(
            (value for name, value in resp.headers if name.lower() == "x-request-id"), None
        )
        status = str(resp.status).split(None, 1)[0]
        ms = request_time.total_seconds() * 1000
        method, path = environ.get("REQUEST_METHOD", "-"), environ.get("RAW_URI", "-")
        self.access_log.info(
            "%s %s %s %.1f ms",
            method,
            path,
            status,
            ms,
            extra={
                "request_id": request_id,
                "method": method,
                "path": path,
                "status": int(status) if status.isdigit() else status,
                "duration_ms": round(ms, 3),
                "remote_addr": environ.get("REMOTE_ADDR"),
            },
        )


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
        # Before the app starts its background work (takeovers among it), so that
        # litellm's first call stalls nothing. Imported here: never in the master.
        from chatsvc.engine import llm  # noqa: PLC0415

        log.info("litellm warmed up in %.2f s", llm.warm_up())
        super().load_wsgi()
        # The app loads litellm: some 400,000 long-lived objects that every full
        # garbage collection would walk, stalling all the worker's streams for
        # ~200 ms at a time. Freezing moves them out of the collector's sight.
        gc.collect()
        gc.freeze()
        # gevent prints a greenlet's unhandled exception to stderr itself; as a
        # log line it is in CHATSVC_LOG_FORMAT like every other line.
        gevent.get_hub().print_exception = _log_greenlet_error

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn's own error response (a request it could not parse), with a request id
        on the response and on the lines gunicorn logs about it."""
        rid = logs.request_id(None)
        logs.REQUEST_ID.set(rid)
        super().handle_error(req, _WithRequestId(client, rid), addr, exc)

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


class _WithRequestId:
    """A client socket whose error response, written in one piece, gets an X-Request-ID."""

    def __init__(self, sock: Any, rid: str) -> None:
        self._sock = sock
        self._header = f"X-Request-ID: {rid}\r\n".encode()

    def sendall(self, data: bytes) -> None:
        status, crlf, rest = data.partition(b"\r\n")
        self._sock.sendall(status + crlf + self._header + rest)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _log_greenlet_error(context: Any, kind: Any, value: Any, tb: Any) -> None:
    log.error("%s failed", context, exc_info=(kind, value, tb))


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


def metrics_directory(configured: Path | None) -> tuple[Path, bool]:
    """The instance's metrics directory, emptied (or made): the configured one, else a new
    temporary one; and whether it was made here (and is to be removed at exit)."""
    if configured is None:
        return Path(tempfile.mkdtemp(prefix="chatsvc-metrics-")), True
    configured.mkdir(parents=True, exist_ok=True)
    # What an earlier run left would be added to this run's counters.
    for stale in configured.glob("*.db"):
        stale.unlink()
    return configured, False


def serve(host: str, port: int, workers: int, *, log_format: str, metrics_dir: Path | None) -> None:
    """Run gunicorn in this process until it is stopped."""
    if "psycopg" in sys.modules:
        raise RuntimeError("the gunicorn master must not import psycopg before forking workers")
    if "prometheus_client" in sys.modules:
        # It reads the directory once, at import: the workers it is forked into
        # would each keep their metrics to themselves.
        raise RuntimeError("the gunicorn master must not import prometheus_client before serve")
    directory, made = metrics_directory(metrics_dir)
    os.environ[METRICS_DIR_VARIABLE] = str(directory)
    from prometheus_client import multiprocess  # noqa: PLC0415 - after the variable is set

    def child_exit(_server: Any, worker: Any) -> None:
        # A dead worker's gauges no longer count; its counters still do.
        multiprocess.mark_process_dead(worker.pid, str(directory))  # type: ignore[no-untyped-call]

    def on_exit(_server: Any) -> None:
        if made:
            shutil.rmtree(directory, ignore_errors=True)

    options = gunicorn_options(
        host, port, workers, log_format=log_format, child_exit=child_exit, on_exit=on_exit
    )
    Server(options).run()
