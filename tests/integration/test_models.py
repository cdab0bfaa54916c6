"""Models: which a client may choose (GET /api/models, 422 unknown_model on send), and how a
model call that fails is described and metered (through litellm's real OpenAI path)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result

from chatsvc import cli
from tests.support import (
    TEST_SETTINGS,
    ApiClient,
    AppServer,
    FakeLLMServer,
    WsClient,
    make_user,
    wait_until,
)
from tests.support import query as rows


def _counts(db_url: str) -> tuple[int, int]:
    found = rows(
        db_url, "SELECT (SELECT count(*) FROM messages) m, (SELECT count(*) FROM llm_calls) c"
    )
    return found[0]["m"], found[0]["c"]


def _ended(client: ApiClient, message_id: str, timeout: float = 30) -> dict[str, Any]:
    """The message once it is terminal (a failed answer may end before a stream could open)."""
    found: dict[str, Any] = {}

    def ended() -> bool:
        found.update(client.get(f"/api/messages/{message_id}").json())
        return found["status"] != "streaming"

    wait_until(f"{message_id} to end", ended, timeout)
    return found


def _tokens(db_url: str, message_id: str) -> list[dict[str, Any]]:
    return rows(
        db_url,
        "SELECT prompt_tokens, completion_tokens, estimated FROM llm_calls WHERE message_id = %s",
        message_id,
    )


@pytest.fixture
def choosy(db_url: str, fake_llm: FakeLLMServer) -> Iterator[AppServer]:
    """An app whose operator lists two fake models and one litellm cannot place."""
    settings = fake_llm.settings(models=("openai/fake", "openai/other", "nope/none"))
    server = AppServer(db_url, settings)
    yield server
    server.stop()


def test_without_chatsvc_models_the_default_model_alone(alice: ApiClient) -> None:
    response = alice.get("/api/models")
    assert response.status_code == 200
    assert response.json() == {"items": [{"id": "chatsvc/offline", "default": True}]}


def test_chatsvc_models_are_listed_in_order_with_the_default_marked(choosy: AppServer) -> None:
    client = ApiClient(choosy.base, make_user(choosy.db_url, "alice"))
    assert client.get("/api/models").json() == {
        "items": [
            {"id": "openai/fake", "default": True},
            {"id": "openai/other", "default": False},
            {"id": "nope/none", "default": False},
        ]
    }
    assert ApiClient(choosy.base, None).get("/api/models").status_code == 401


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("openai/gpt-4o", "not available here"),  # a real model the operator did not list
        ("chatsvc/offline", "not available here"),  # the built-in model, not listed either
        ("nope/none", "cannot tell which provider"),  # listed, but litellm cannot call it
    ],
)
def test_a_model_a_client_may_not_choose_is_refused_before_anything_is_written(
    choosy: AppServer, model: str, says: str
) -> None:
    client = ApiClient(choosy.base, make_user(choosy.db_url, "alice"))
    conversation = client.conversation()
    before = _counts(choosy.db_url)
    response = client.post(
        f"/api/conversations/{conversation['id']}/messages", {"content": "hi", "model": model}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "unknown_model"
    assert says in response.json()["error"]["message"]
    assert _counts(choosy.db_url) == before == (0, 0)
    assert choosy.runtime.answerer is not None and not choosy.runtime.checkpointer.streams


def test_the_websocket_send_frame_refuses_it_the_same_way(choosy: AppServer) -> None:
    token = make_user(choosy.db_url, "alice")
    conversation = ApiClient(choosy.base, token).conversation()
    ws = WsClient(choosy.base)
    try:
        ws.send({"type": "auth", "token": token})
        send = {"type": "send", "conversation_id": conversation["id"], "content": "hi"}
        ws.send({**send, "model": "anthropic/claude-3-5-sonnet"})
        frame = ws.receive()
        assert (frame["type"], frame["code"], frame["request"]) == (
            "error",
            "unknown_model",
            "send",
        )
        assert _counts(choosy.db_url) == (0, 0)
        ws.send({**send, "model": "openai/other", "content": "@fake chunks=2"})
        frames = ws.until(lambda f: f["type"] == "done")
    finally:
        ws.close()
    assert frames[-1]["status"] == "completed"
    assert [
        m["model"]
        for m in rows(choosy.db_url, "SELECT model FROM messages WHERE role = 'assistant'")
    ] == ["openai/other"]


def test_a_listed_model_writes_the_answer_and_none_means_the_default(
    choosy: AppServer, fake_llm: FakeLLMServer
) -> None:
    client = ApiClient(choosy.base, make_user(choosy.db_url, "alice"))
    chosen = client.send(client.conversation()["id"], "@fake chunks=2", model="openai/other")
    default = client.send(client.conversation()["id"], "@fake chunks=2")
    assert chosen["assistant_message"]["model"] == "openai/other"
    assert default["assistant_message"]["model"] == "openai/fake"
    for sent in (chosen, default):
        assert client.wait_terminal(sent["assistant_message"]["id"])["status"] == "completed"
    assert sorted(r["model"] for r in fake_llm.app.requests) == ["fake", "other"]


# --- failed model calls -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("directives", "error"),
    [
        (
            "status=401 message=Incorrect_API_key_provided",
            "Authentication failed (openai, HTTP 401): Incorrect API key provided",
        ),
        ("status=403", "Authentication failed (openai, HTTP 403): fake Forbidden"),
        (
            "status=404 message=The_model_does_not_exist",
            "Model not found (openai, HTTP 404): The model does not exist",
        ),
        ("status=429", "Rate limited (openai, HTTP 429): fake Too Many Requests"),
        ("status=500", "Provider server error (openai, HTTP 500): fake Internal Server Error"),
        ("status=503", "Provider server error (openai, HTTP 503): fake Service Unavailable"),
        ("wait=3", "Timed out (openai): "),
    ],
)
def test_a_provider_error_is_classified_readably_and_books_no_tokens(
    db_url: str, fake_llm: FakeLLMServer, directives: str, error: str
) -> None:
    settings = fake_llm.settings(llm_timeout_s=0.3)
    server = AppServer(db_url, settings)
    try:
        client = ApiClient(server.base, make_user(db_url, "alice"))
        answer = client.ask(f"@fake {directives}")
        failed = _ended(client, answer)
    finally:
        fake_llm.app.release.set()
        server.stop()
    assert failed["status"] == "failed"
    assert failed["error"].startswith(error), failed["error"]
    assert "Exception" not in failed["error"] and "Error:" not in failed["error"]
    assert failed["usage"]["prompt_tokens"] == failed["usage"]["completion_tokens"] == 0
    assert _tokens(db_url, answer) == [
        {"prompt_tokens": 0, "completion_tokens": 0, "estimated": False}
    ]
    assert (
        ApiClient(server.base, None)
        and rows(db_url, "SELECT prompt_tokens FROM users")[0]["prompt_tokens"] == 0
    )


def test_a_call_never_sent_for_want_of_a_key_says_so_and_books_nothing(
    db_url: str, fake_llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = TEST_SETTINGS.with_(model="openai/fake", llm_api_base=fake_llm.api_base)
    server = AppServer(db_url, settings)
    try:
        client = ApiClient(server.base, make_user(db_url, "alice"))
        failed = _ended(client, client.ask("hi"))
    finally:
        server.stop()
    assert failed["error"].startswith("Authentication failed (openai): Missing credentials"), (
        failed["error"]
    )
    assert fake_llm.app.requests == []
    assert failed["usage"]["prompt_tokens"] == failed["usage"]["completion_tokens"] == 0


def test_a_call_cut_off_after_it_produced_text_is_still_estimated(llm_app: AppServer) -> None:
    client = ApiClient(llm_app.base, make_user(llm_app.db_url, "alice"))
    answer = client.ask("@fake chunks=10 fail_after=4")
    failed = client.wait_terminal(answer)
    assert failed["status"] == "failed" and failed["content_length"] == 16
    assert failed["error"].startswith("Connection to the provider failed (openai): ")
    (call,) = _tokens(llm_app.db_url, answer)
    assert call["estimated"] and call["prompt_tokens"] > 0 and call["completion_tokens"] > 0


# --- the check `chatsvc serve` runs -------------------------------------------------------


def _models(env: dict[str, str]) -> Result:
    return CliRunner().invoke(cli.main, ["models"], env={"CHATSVC_MODELS": "", **env})


def test_chatsvc_models_lists_and_checks_the_models(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "CHATSVC_MODEL", "CHATSVC_LLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    ok = _models({})
    assert ok.exit_code == 0, ok.output
    assert ok.output.splitlines() == ["chatsvc/offline  (default)"]
    env = {
        "CHATSVC_MODEL": "openai/gpt-4o-mini",
        "CHATSVC_MODELS": "openai/gpt-4o-mini,anthropic/claude-3-5-haiku",
    }
    missing = _models(env)
    assert missing.exit_code == 1
    default = "error: the default model (CHATSVC_MODEL): the model 'openai/gpt-4o-mini'"
    assert f"{default} needs OPENAI_API_KEY" in missing.output
    assert (
        "warning: the model 'anthropic/claude-3-5-haiku' needs ANTHROPIC_API_KEY" in missing.output
    )
    assert _models({**env, "OPENAI_API_KEY": "sk-x"}).exit_code == 0
    unplaced = _models({"CHATSVC_MODEL": "nope/none"})
    assert unplaced.exit_code == 1
    assert "cannot tell which provider serves the model 'nope/none'" in unplaced.output


def test_serve_refuses_to_start_when_the_default_model_cannot_be_called(db_url: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "DATABASE_URL": db_url}
    refused = subprocess.run(
        [sys.executable, "-m", "chatsvc", "serve", "--port", "1"],
        env={**env, "CHATSVC_MODEL": "openai/gpt-4o-mini"},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.count("OPENAI_API_KEY") == 1, refused.stderr
    assert "not starting: the default model cannot be called" in refused.stderr
    assert "--skip-model-check" in refused.stderr
    assert "Booting worker" not in refused.stderr
