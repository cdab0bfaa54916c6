"""Real gunicorn processes (`chatsvc serve`) sharing one database, and the fake LLM."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gevent
import pytest
import requests

from tests.conftest import clone_database, database_url, drop_database
from tests.e2e.browser import ARTIFACTS, Chromium
from tests.support import ApiClient, FakeLLMServer, make_user

_names = itertools.count()

# Server logs of the last run, kept for reading after a failure (cleared per session).
LOGS = Path(__file__).resolve().parents[2] / "test-artifacts" / "logs"


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Instance:
    """One `chatsvc serve` (gunicorn master + gevent workers) on its own port."""

    def __init__(
        self,
        db_url: str,
        llm: FakeLLMServer,
        *,
        workers: int = 1,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.db_url = db_url
        self.llm = llm
        self.workers = workers
        self.extra_env = env or {}
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log = Path(
            tempfile.mkstemp(prefix=f"chatsvc-{self.port}-", suffix=".log", dir=LOGS)[1]
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def environment(self) -> dict[str, str]:
        """The environment the server runs with."""
        return {
            **os.environ,
            "DATABASE_URL": self.db_url,
            "CHATSVC_MODEL": "openai/fake",
            # The models a client may name: the fake answers under any name.
            "CHATSVC_MODELS": "openai/fake,openai/fake-2",
            "CHATSVC_LLM_API_BASE": self.llm.api_base,
            "CHATSVC_LLM_API_KEY": "sk-test",
            "CHATSVC_LEASE_S": "3",
            **self.extra_env,
        }

    def start(self) -> Instance:
        """Start the server (returns at once; see wait_ready)."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "chatsvc",
                    "serve",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self.workers),
                ],
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float = 60) -> Instance:
        """Wait until /readyz answers 200 from every worker (or fail with the log)."""
        ready_answers = 0
        with gevent.Timeout(timeout, AssertionError(f"not ready:\n{self.tail()}")):
            while ready_answers < 3 * self.workers:
                assert self.proc is not None and self.proc.poll() is None, self.tail()
                try:
                    ok = requests.get(self.base + "/readyz", timeout=5).status_code == 200
                except (requests.ConnectionError, requests.Timeout):
                    ok = False
                ready_answers = ready_answers + 1 if ok else 0
                gevent.sleep(0.1 if ok else 0.2)
        return self

    def signal(self, sig: int) -> None:
        """Send a signal to the whole process group (master and workers)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL everything: a crash, no chance to clean up."""
        self.signal(signal.SIGKILL)
        self.wait()

    def wait(self, timeout: float = 30) -> int:
        """Wait for the master to exit."""
        assert self.proc is not None
        with gevent.Timeout(timeout):
            while self.proc.poll() is None:
                gevent.sleep(0.05)
        return int(self.proc.returncode)

    def stop(self) -> None:
        """Stop gracefully if running, then make sure nothing is left."""
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.wait(25)
            except gevent.Timeout:
                self.kill()
        self.signal(signal.SIGKILL)  # stray workers

    def tail(self, lines: int = 60) -> str:
        """The end of the server's log."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def client(self, token: str) -> ApiClient:
        """An API client for this instance."""
        return ApiClient(self.base, token)


@pytest.fixture(scope="session", autouse=True)
def fresh_logs() -> None:
    """Only this session's server logs in test-artifacts/logs."""
    shutil.rmtree(LOGS, ignore_errors=True)


@contextmanager
def serving(*instances: Instance) -> Iterator[tuple[Instance, ...]]:
    """Start the instances, wait until each is ready, and stop them all at the end."""
    try:
        for instance in instances:
            instance.start()
        for instance in instances:
            instance.wait_ready()
        yield instances
    finally:
        for instance in instances:
            instance.stop()


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeLLMServer]:
    server = FakeLLMServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_db(pg_server: str, template_db: str) -> Iterator[str]:
    """One database for the module's server processes."""
    name = clone_database(pg_server, template_db)
    yield database_url(pg_server, name)
    drop_database(pg_server, name)


@pytest.fixture(scope="module")
def pair(shared_db: str, fake_llm: FakeLLMServer) -> Iterator[tuple[Instance, Instance]]:
    """Two single-worker instances on different ports sharing one database."""
    with serving(Instance(shared_db, fake_llm), Instance(shared_db, fake_llm)) as (a, b):
        yield a, b


@pytest.fixture
def db(pg_server: str, template_db: str) -> Iterator[str]:
    """A database of this test's own (its instances die in unusual ways)."""
    name = clone_database(pg_server, template_db)
    yield database_url(pg_server, name)
    drop_database(pg_server, name)


@pytest.fixture
def token(shared_db: str) -> str:
    """A token for a fresh user in the shared database."""
    return make_user(shared_db, f"user{next(_names)}")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Chromium]:
    """One headless Chromium for a module's browser tests."""
    ARTIFACTS.mkdir(exist_ok=True)
    browser = Chromium()
    yield browser
    browser.close()


@pytest.fixture
def context(chromium: Chromium) -> Iterator[str]:
    """A fresh cookie jar for the test."""
    name = f"ctx-{next(_names)}"
    yield name
    chromium.close_context(name)
