"""The app in this process, talking through litellm to a fake OpenAI-compatible server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import AppServer, FakeLLMServer


@pytest.fixture
def fake_llm() -> Iterator[FakeLLMServer]:
    server = FakeLLMServer()
    yield server
    server.stop()


@pytest.fixture
def llm_app(db_url: str, fake_llm: FakeLLMServer) -> Iterator[AppServer]:
    """The app talking to the fake OpenAI-compatible server through litellm."""
    server = AppServer(db_url, fake_llm.settings())
    yield server
    server.stop()
