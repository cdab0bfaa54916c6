"""`chatsvc serve` as a newcomer runs it: Ctrl-C ends it cleanly, a second one on the same
port says so in one line."""

from __future__ import annotations

import signal

import pytest

from tests.e2e.conftest import Instance, serving
from tests.support import FakeLLMServer

pytestmark = pytest.mark.e2e


def test_ctrl_c_ends_the_server_without_a_traceback(
    shared_db: str, fake_llm: FakeLLMServer
) -> None:
    instance = Instance(shared_db, fake_llm, workers=2)
    with serving(instance):
        # What a terminal does on Ctrl-C: SIGINT to every process of the foreground group.
        instance.signal(signal.SIGINT)
        assert instance.wait(30) == 0, instance.tail()
    log = instance.log.read_text()
    assert "Shutting down: Master" in log
    assert "Traceback" not in log and "SystemExit" not in log, instance.tail()


def test_a_second_server_on_the_same_port_says_so_in_one_line(
    shared_db: str, fake_llm: FakeLLMServer
) -> None:
    first = Instance(shared_db, fake_llm)
    with serving(first):
        second = Instance(shared_db, fake_llm, port=first.port).start()
        assert second.wait(30) == 1
        lines = second.log.read_text().splitlines()
        assert lines == [f"Error: port {first.port} is in use on 127.0.0.1; try --port"]
