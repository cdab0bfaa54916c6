"""What the model is asked: the conversation, tool exchanges, the continuation of a cut-off answer.

Kept apart from chatsvc.llm so that code that only needs the wording (the fake
LLM) does not import litellm. Messages are in the OpenAI format litellm takes.
"""

from __future__ import annotations

import json
from typing import Any

CONTINUE_INSTRUCTION = (
    "Your previous answer was cut off. Continue it exactly where it stopped: do not "
    "repeat anything already written and do not comment on the interruption."
)

Prompt = list[dict[str, Any]]


def continuation(partial: str | None) -> Prompt:
    """The partial text of a cut-off model call, and the instruction to continue it."""
    if not partial:
        return []
    return [
        {"role": "assistant", "content": partial},
        {"role": "user", "content": CONTINUE_INSTRUCTION},
    ]


def answer_messages(
    parts: list[dict[str, Any]], steps: dict[str, int] | None = None
) -> tuple[Prompt, str]:
    """An answer's parts as chat messages, and its text after its last tool exchange.

    Reasoning is left out: the model never gets it back as answer text. The
    tool parts of one model call (`steps` says which, by tool_call_id) become
    one assistant message with its `tool_calls` (and the text before them as
    its content), followed by one `tool` message a call.
    """
    messages: Prompt = []
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    results: Prompt = []
    step = None
    for part in parts:
        if part["type"] == "tool":
            # A new model call's tools start a new exchange.
            this = (steps or {}).get(part["tool_call_id"], step)
            if calls and this != step:
                messages += _exchange(text, calls, results)
                text, calls, results = [], [], []
            step = this
        if part["type"] == "text":
            if calls:
                messages += _exchange(text, calls, results)
                text, calls, results = [], [], []
            text.append(part["text"])
        elif part["type"] == "tool":
            calls.append(_call(part))
            results.append(
                {"role": "tool", "tool_call_id": part["tool_call_id"], "content": result(part)}
            )
    if calls:
        messages += _exchange(text, calls, results)
        text = []
    return messages, "".join(text)


def _exchange(text: list[str], calls: list[dict[str, Any]], results: Prompt) -> Prompt:
    said = "".join(text)
    return [{"role": "assistant", "content": said or None, "tool_calls": calls}, *results]


def _call(part: dict[str, Any]) -> dict[str, Any]:
    given = part.get("input")
    arguments = given if isinstance(given, str) else json.dumps(given, ensure_ascii=False)
    return {
        "id": part["tool_call_id"],
        "type": "function",
        "function": {"name": part["name"], "arguments": arguments},
    }


def result(part: dict[str, Any]) -> str:
    """What the model is told a tool call came to: its output as JSON text, or the error."""
    if part["state"] == "output-available":
        return json.dumps(part.get("output"), ensure_ascii=False)
    if part["state"] == "output-error":
        return f"Error: {part.get('error') or 'the call failed.'}"
    return "Error: this call has no result."
