"""The tool loop through the real litellm path: the fake LLM calls tools on the fake tool server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from click.testing import CliRunner

from chatsvc import cli
from chatsvc.fakellm import parse_directives, script_reasoning, script_text
from tests.faketools import FakeToolServer
from tests.support import (
    ApiClient,
    AppServer,
    FakeLLMServer,
    follow_message,
    make_user,
    query,
)

SCHEMA = 'parameters = { type = "object", properties = { n = { type = "integer" } } }'


def tools_file(path: Path, tools: FakeToolServer, **extra: str) -> Path:
    """A tools file with the fake server's tools: add, echo (idempotent), broken, slow."""
    declared = {
        "add": (tools.url("ok", "add"), "false", "5"),
        "echo": (tools.url("ok", "echo", idempotent=True), "true", "5"),
        "broken": (tools.url("fail", "broken"), "false", "5"),
        "slow": (tools.url("slow", "slow"), "false", extra.get("slow_timeout", "30")),
    }
    text = "".join(
        f'[[tools]]\nname = "{name}"\nurl = "{url}"\nidempotent = {idem}\n'
        f"timeout_s = {timeout}\n{SCHEMA}\n\n"
        for name, (url, idem, timeout) in declared.items()
    )
    target = path / "tools.toml"
    target.write_text(text)
    return target


@pytest.fixture
def app(
    db_url: str, fake_llm: FakeLLMServer, fake_tools: FakeToolServer, tmp_path: Path
) -> Iterator[AppServer]:
    settings = fake_llm.settings(
        tools_file=tools_file(tmp_path, fake_tools, slow_timeout="1"), max_steps=4
    )
    server = AppServer(db_url, settings)
    yield server
    server.stop()


@pytest.fixture
def client(app: AppServer) -> ApiClient:
    return ApiClient(app.base, make_user(app.db_url, "tina"))


def _row(db_url: str, message_id: str) -> Any:
    (row,) = query(
        db_url,
        "SELECT status, content, parts, usage, error, reasoning_length FROM messages WHERE id = %s",
        message_id,
    )
    return tuple(row.values())


def _ledger(db_url: str, message_id: str) -> list[Any]:
    sql = (
        "SELECT tool_call_id, name, arguments, status, attempts, output, error, "
        "idempotency_key, finished_at IS NOT NULL FROM tool_calls WHERE message_id = %s "
        "ORDER BY tool_call_id"
    )
    return [tuple(r.values()) for r in query(db_url, sql, message_id)]


def _llm_calls(db_url: str, message_id: str) -> list[Any]:
    sql = (
        "SELECT step, prompt_tokens, completion_tokens, estimated FROM llm_calls "
        "WHERE message_id = %s ORDER BY step, created_at"
    )
    return [tuple(r.values()) for r in query(db_url, sql, message_id)]


def test_two_calls_of_one_step_run_and_their_results_reach_the_model(
    app: AppServer, client: ApiClient, fake_llm: FakeLLMServer, fake_tools: FakeToolServer
) -> None:
    question = '@fake calls=add:{"n":1};echo:{"n":2} reasoning=2 chunks=5 delay=0.02'
    message_id = client.ask(question)
    assert client.token is not None
    live = gevent.spawn(follow_message, [app.base], client.token, message_id, parts=True)
    message = client.wait_terminal(message_id)
    assert message["status"] == "completed", message
    _, content, parts, usage, error, reasoning_length = _row(app.db_url, message_id)
    directives = parse_directives(question)
    assert content == script_text(directives) and error is None
    reasoning = script_reasoning(directives, 0) + script_reasoning(directives, 1)
    assert reasoning_length == len(reasoning) and reasoning[:4] not in content
    assert [p["type"] for p in parts] == ["reasoning", "tool", "tool", "reasoning", "text"]
    assert parts[0]["text"] + parts[3]["text"] == reasoning
    # What a client read live over SSE rebuilds the stored parts.
    read = live.get(timeout=10)
    assert (read.text, read.reasoning) == (content, reasoning)
    assert [read.tools[p["tool_call_id"]]["output"] for p in parts[1:3]] == [
        p["output"] for p in parts[1:3]
    ]
    add, echo = parts[1], parts[2]
    assert add["state"] == echo["state"] == "output-available"
    assert add["input"] == {"n": 1} and add["output"]["effect"] == 1
    ledger = _ledger(app.db_url, message_id)
    assert [(r[0], r[1], r[3], r[4], r[8]) for r in ledger] == [
        ("call_0_0", "add", "succeeded", 1, True),
        ("call_0_1", "echo", "succeeded", 1, True),
    ]
    keys = {r[7] for r in ledger}
    assert len(keys) == 2 and all(fake_tools.app.attempts(k) == 1 for k in keys)
    bodies = [r.body for r in fake_tools.app.received]
    assert {b["tool_call_id"] for b in bodies} == {"call_0_0", "call_0_1"}
    assert all(b["message_id"] == message_id and b["user"] == "tina" for b in bodies)
    # The second model call got the assistant's calls and both results, no reasoning.
    first, second = fake_llm.app.requests[-2:]
    assert [t["function"]["name"] for t in first["tools"]] == ["add", "echo", "broken", "slow"]
    asked, *results = second["messages"][-3:]
    assert asked["role"] == "assistant" and asked.get("content") is None
    assert [c["function"] for c in asked["tool_calls"]] == [
        {"name": "add", "arguments": '{"n": 1}'},
        {"name": "echo", "arguments": '{"n": 2}'},
    ]
    assert [(r["role"], r["tool_call_id"]) for r in results] == [
        ("tool", "call_0_0"),
        ("tool", "call_0_1"),
    ]
    assert json.loads(results[0]["content"])["effect"] == 1
    assert all(reasoning[:8] not in json.dumps(m) for m in second["messages"])
    # One llm_calls row per model call; usage is their sum.
    calls = _llm_calls(app.db_url, message_id)
    assert [c[0] for c in calls] == [0, 1] and not any(c[3] for c in calls)
    assert usage["prompt_tokens"] == sum(c[1] for c in calls)
    assert usage["completion_tokens"] == sum(c[2] for c in calls)
    # A later turn is told the earlier answer's tool exchange and text, never its reasoning.
    conversation_id = client.get(f"/api/messages/{message_id}").json()["conversation_id"]
    later = client.send(conversation_id, "@fake chunks=2")["assistant_message"]["id"]
    client.wait_terminal(later)
    told = fake_llm.app.requests[-1]["messages"]
    assert [m["role"] for m in told] == ["user", "assistant", "tool", "tool", "assistant", "user"]
    assert told[4]["content"] == content and reasoning[:8] not in json.dumps(told)


def test_invalid_calls_are_never_sent_and_the_model_is_told_why(
    app: AppServer, client: ApiClient, fake_llm: FakeLLMServer, fake_tools: FakeToolServer
) -> None:
    question = '@fake calls=nosuch:{};add:{"n":;add:{"n":"x"};broken:{} chunks=3'
    message_id = client.ask(question)
    assert client.wait_terminal(message_id)["status"] == "completed"
    _, _, parts, _, _, _ = _row(app.db_url, message_id)
    tools = [p for p in parts if p["type"] == "tool"]
    assert [p["state"] for p in tools] == ["output-error"] * 4
    assert "no tool named 'nosuch'" in tools[0]["error"]
    assert "not valid JSON" in tools[1]["error"] and tools[1]["input"] == '{"n":'
    assert "parameters" in tools[2]["error"]
    assert "HTTP 500" in tools[3]["error"]
    ledger = _ledger(app.db_url, message_id)
    assert [(r[3], r[4]) for r in ledger] == [("failed", 0)] * 3 + [("failed", 1)]
    assert len(fake_tools.app.received) == 1  # only the valid call went out
    told = [m for m in fake_llm.app.requests[-1]["messages"] if m["role"] == "tool"]
    assert [m["content"] for m in told] == [f"Error: {p['error']}" for p in tools]


def test_a_tool_that_times_out_fails_and_the_answer_goes_on(
    app: AppServer, client: ApiClient
) -> None:
    message_id = client.ask("@fake calls=slow:{} chunks=3")
    assert client.wait_terminal(message_id)["status"] == "completed"
    (row,) = _ledger(app.db_url, message_id)
    assert row[3] == "failed" and "within 1 s" in row[6]


def test_max_steps_ends_the_answer_with_an_error_and_the_last_calls_not_run(
    app: AppServer, client: ApiClient, fake_tools: FakeToolServer
) -> None:
    message_id = client.ask('@fake calls=add:{"n":1} steps=10 chunks=3')
    message = client.wait_terminal(message_id)
    assert message["status"] == "completed" and "CHATSVC_MAX_STEPS" in message["error"]
    ledger = _ledger(app.db_url, message_id)
    assert [(r[0], r[3], r[4]) for r in ledger] == [
        ("call_0_0", "succeeded", 1),
        ("call_1_0", "succeeded", 1),
        ("call_2_0", "succeeded", 1),
        ("call_3_0", "failed", 0),
    ]
    assert len(fake_tools.app.received) == 3
    assert [c[0] for c in _llm_calls(app.db_url, message_id)] == [0, 1, 2, 3]
    _, content, parts, *_ = _row(app.db_url, message_id)
    assert content == "" and parts[-1]["state"] == "output-error"


def test_cancel_during_a_slow_tool_abandons_it_and_calls_the_model_no_more(
    app: AppServer, client: ApiClient, fake_llm: FakeLLMServer, fake_tools: FakeToolServer
) -> None:
    app.runtime.answerer.registry.tools["slow"] = app.runtime.answerer.registry.tools[
        "slow"
    ].model_copy(update={"timeout_s": 30.0})  # type: ignore[union-attr]
    message_id = client.ask("@fake calls=slow:{} chunks=3")
    assert fake_tools.app.arrived.wait(10)
    requests_before = len(fake_llm.app.requests)
    assert client.post(f"/api/messages/{message_id}/cancel").status_code == 202
    assert client.wait_terminal(message_id)["status"] == "cancelled"
    (row,) = _ledger(app.db_url, message_id)
    assert row[3] == "unknown" and "cancelled" in row[6]
    gevent.sleep(0.3)
    assert len(fake_llm.app.requests) == requests_before
    _, _, parts, *_ = _row(app.db_url, message_id)
    assert parts[-1]["state"] == "output-error" and "cancelled" in parts[-1]["error"]
    assert [c[0] for c in _llm_calls(app.db_url, message_id)] == [0]


def test_chatsvc_show_lists_an_answers_tool_calls(app: AppServer, client: ApiClient) -> None:
    message_id = client.ask('@fake calls=add:{"n":1};broken:{} reasoning=1 chunks=3')
    message = client.wait_terminal(message_id)
    shown = CliRunner().invoke(
        cli.main, ["show", message["conversation_id"]], env={"DATABASE_URL": app.db_url}
    )
    assert shown.exit_code == 0, shown.output
    assert "reasoning=8 chars" in shown.output
    assert "tool add call_0_0: output-available" in shown.output
    assert "tool broken call_0_1: output-error" in shown.output and "HTTP 500" in shown.output


def test_continue_after_a_cancel_during_a_tool_call_goes_on_from_its_outcome(
    app: AppServer, client: ApiClient, fake_llm: FakeLLMServer, fake_tools: FakeToolServer
) -> None:
    app.runtime.answerer.registry.tools["slow"] = app.runtime.answerer.registry.tools[
        "slow"
    ].model_copy(update={"timeout_s": 30.0})  # type: ignore[union-attr]
    content = "@fake calls=slow:{} chunks=3 reasoning=1"
    message_id = client.ask(content)
    assert fake_tools.app.arrived.wait(10)
    client.post(f"/api/messages/{message_id}/cancel")
    stopped = client.wait_terminal(message_id)
    sent_to_tools = len(fake_tools.app.received)
    response = client.post(f"/api/messages/{message_id}/continue")
    assert response.status_code == 202, response.text
    assert response.json()["parts"] == stopped["parts"]  # as stopped, streaming again
    final = client.wait_terminal(message_id)
    # The abandoned call is not sent again: the model is told its outcome and answers.
    assert len(fake_tools.app.received) == sent_to_tools
    assert final["status"] == "completed"
    assert final["content"] == script_text(parse_directives(content))
    assert [p["type"] for p in final["parts"]] == ["reasoning", "tool", "reasoning", "text"]
    assert final["parts"][1] == stopped["parts"][1]
    told = fake_llm.app.requests[-1]["messages"]
    assert told[-1]["role"] == "tool" and "cancelled" in told[-1]["content"]
    assert [c[0] for c in _llm_calls(app.db_url, message_id)] == [0, 1]


def test_chatsvc_show_lists_the_current_branch_with_its_versions(
    app: AppServer, client: ApiClient
) -> None:
    conversation = client.conversation()["id"]
    sent = client.send(conversation, "@fake chunks=2")
    old = client.wait_terminal(sent["assistant_message"]["id"])
    new = client.post(f"/api/messages/{old['id']}/regenerate").json()["assistant_message"]
    client.wait_terminal(new["id"])
    shown = CliRunner().invoke(cli.main, ["show", conversation], env={"DATABASE_URL": app.db_url})
    assert shown.exit_code == 0, shown.output
    assert new["id"] in shown.output and old["id"] not in shown.output
    assert "version 2/2" in shown.output
