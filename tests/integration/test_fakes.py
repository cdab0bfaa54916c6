"""The fakes the tests stand on: the fake LLM through the real litellm, and the fake tools."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from chatsvc.engine import llm
from chatsvc.fakellm import parse_directives, script_calls, script_reasoning, script_text
from tests.faketools import FakeToolServer
from tests.support import FakeLLMServer

QUESTION = '@fake reasoning=3 size=4 delay=0 calls=charge:{"amount":5};lookup:{"q":"x"}'


@pytest.fixture
def fake_tools() -> Iterator[FakeToolServer]:
    server = FakeToolServer(slow_s=0.1)
    yield server
    server.stop()


def _stream(fake_llm: FakeLLMServer, messages: list[dict[str, Any]]) -> dict[str, Any]:
    import litellm

    response = litellm.completion(
        model="openai/fake",
        api_base=fake_llm.api_base,
        api_key="sk-test",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    reasoning, text, finish = "", "", None
    calls: dict[int, dict[str, str]] = {}
    for chunk in response:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        reasoning += getattr(delta, "reasoning_content", None) or ""
        text += delta.content or ""
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] = call.id or entry["id"]
            entry["name"] = call.function.name or entry["name"]
            entry["arguments"] += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return {"reasoning": reasoning, "text": text, "calls": calls, "finish": finish}


def test_litellm_passes_the_fakes_reasoning_and_streamed_tool_calls_through(
    fake_llm: FakeLLMServer,
) -> None:
    directives = parse_directives(QUESTION)
    question = {"role": "user", "content": QUESTION}
    first = _stream(fake_llm, [question])
    assert first["reasoning"] == script_reasoning(directives, 0) and len(first["reasoning"]) == 12
    assert first["text"] == "" and first["finish"] == "tool_calls"
    assert [(c["id"], c["name"], c["arguments"]) for c in first["calls"].values()] == [
        ("call_0_0", "charge", '{"amount":5}'),
        ("call_0_1", "lookup", '{"q":"x"}'),
    ]
    assert script_calls(directives) == [("charge", '{"amount":5}'), ("lookup", '{"q":"x"}')]
    tool_calls = [
        {
            "id": c["id"],
            "type": "function",
            "function": {"name": c["name"], "arguments": c["arguments"]},
        }
        for c in first["calls"].values()
    ]
    results = [
        {"role": "tool", "tool_call_id": c["id"], "content": json.dumps({"ok": True})}
        for c in first["calls"].values()
    ]
    second = _stream(
        fake_llm,
        [question, {"role": "assistant", "content": None, "tool_calls": tool_calls}, *results],
    )
    assert second["reasoning"] == script_reasoning(directives, 1) != first["reasoning"]
    assert second["text"] == script_text(directives) and second["finish"] == "stop"
    assert second["calls"] == {}
    sent = fake_llm.app.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]


def test_the_fake_tools_count_attempts_and_effects(fake_tools: FakeToolServer) -> None:
    def call(url: str, key: str) -> requests.Response:
        body = {"name": "charge", "arguments": {"amount": 5}}
        return requests.post(url, json=body, headers={"Idempotency-Key": key}, timeout=5)

    plain = fake_tools.url("ok", "charge")
    assert call(plain, "k1").json() == {"tool": "charge", "arguments": {"amount": 5}, "effect": 1}
    assert call(plain, "k1").json()["effect"] == 2  # not idempotent: a second effect
    assert fake_tools.app.attempts("k1") == 2 and fake_tools.app.effects("k1") == 2
    once = fake_tools.url("ok", "charge", idempotent=True)
    first, again = call(once, "k2"), call(once, "k2")
    assert first.content == again.content
    assert fake_tools.app.attempts("k2") == 2 and fake_tools.app.effects("k2") == 1
    failed = call(fake_tools.url("fail", "charge"), "k3")
    assert failed.status_code == 500 and fake_tools.app.effects("k3") == 0
    text = call(fake_tools.url("text", "charge"), "k4")
    assert text.headers["Content-Type"] == "text/plain" and text.text == "plain text for charge"
    assert call(fake_tools.url("slow", "charge"), "k5").json()["effect"] == 1


def test_llm_stream_yields_reasoning_tool_call_fragments_text_and_usage(
    fake_llm: FakeLLMServer,
) -> None:
    from chatsvc.config import Settings

    settings = Settings(model="openai/fake", llm_api_base=fake_llm.api_base, llm_api_key="sk")
    tool = {"type": "function", "function": {"name": "charge", "parameters": {"type": "object"}}}
    pieces = list(
        llm.stream(settings, "openai/fake", [{"role": "user", "content": QUESTION}], [tool])
    )
    assert fake_llm.app.requests[-1]["tools"] == [tool]
    reasoning = "".join(p.reasoning for p in pieces)
    assert reasoning == script_reasoning(parse_directives(QUESTION), 0)
    assert "".join(p.text for p in pieces) == ""
    fragments = [c for p in pieces for c in p.tool_calls]
    assert [(c.index, c.id, c.name) for c in fragments if c.id] == [
        (0, "call_0_0", "charge"),
        (1, "call_0_1", "lookup"),
    ]
    assert "".join(c.arguments for c in fragments if c.index == 0) == '{"amount":5}'
    assert [p.finish_reason for p in pieces if p.finish_reason] == ["tool_calls"]
    assert pieces[-1].usage is not None and not pieces[-1].estimated
