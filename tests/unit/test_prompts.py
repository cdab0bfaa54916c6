"""An answer's parts as the model is told them: tool exchanges in OpenAI's format, no reasoning."""

from __future__ import annotations

import json

from chatsvc.engine import prompts

PARTS = [
    {"type": "reasoning", "text": "secret thoughts"},
    {"type": "text", "text": "Let me check. "},
    {
        "type": "tool",
        "tool_call_id": "a",
        "name": "add",
        "input": {"n": 1},
        "state": "output-available",
        "output": {"sum": 2},
    },
    {
        "type": "tool",
        "tool_call_id": "b",
        "name": "add",
        "input": '{"n":',
        "state": "output-error",
        "error": "not JSON",
    },
    {"type": "reasoning", "text": "more thoughts"},
    {
        "type": "tool",
        "tool_call_id": "c",
        "name": "add",
        "input": {},
        "state": "output-error",
        "error": "unknown",
    },
    {"type": "text", "text": "Done"},
]


def test_parts_become_one_exchange_per_model_call_and_the_text_after() -> None:
    messages, text = prompts.answer_messages(PARTS, {"a": 0, "b": 0, "c": 1})
    assert text == "Done"
    assert [m["role"] for m in messages] == ["assistant", "tool", "tool", "assistant", "tool"]
    first = messages[0]
    assert first["content"] == "Let me check. "
    assert first["tool_calls"] == [
        {"id": "a", "type": "function", "function": {"name": "add", "arguments": '{"n": 1}'}},
        {"id": "b", "type": "function", "function": {"name": "add", "arguments": '{"n":'}},
    ]
    assert messages[1] == {"role": "tool", "tool_call_id": "a", "content": json.dumps({"sum": 2})}
    assert messages[2]["content"] == "Error: not JSON"
    assert messages[3]["content"] is None and messages[3]["tool_calls"][0]["id"] == "c"
    assert "thoughts" not in json.dumps(messages)


def test_a_cut_off_text_is_continued() -> None:
    assert prompts.continuation("") == []
    said, instruction = prompts.continuation("Half a sent")
    assert said == {"role": "assistant", "content": "Half a sent"}
    assert instruction["content"] == prompts.CONTINUE_INSTRUCTION
