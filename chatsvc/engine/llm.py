"""Every LLM call, through litellm with stream=True, and the built-in offline model."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# litellm downloads a model cost map at import unless told not to; we have no
# network in production sandboxes and do our own usage accounting anyway.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")

import litellm
from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import GenericStreamingChunk

from chatsvc.config import OFFLINE_MODEL, Settings
from chatsvc.engine.prompts import CONTINUE_INSTRUCTION

# litellm's per-chunk logging runs in a thread pool that breaks under gevent.
litellm.disable_streaming_logging = True
litellm.suppress_debug_info = True
litellm.telemetry = False
logging.getLogger("LiteLLM").setLevel(logging.WARNING)


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a tool call as the model streams it: id and name first, then arguments."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True, slots=True)
class Piece:
    """What one streamed chunk carried: answer text, reasoning, tool call fragments, and the
    call's usage and finish reason at the end."""

    text: str
    usage: dict[str, int] | None = None
    estimated: bool = False
    reasoning: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None


def _piece(chunk: Any) -> Piece | None:
    """The content of one litellm chunk, or None when it carries nothing of ours."""
    if not chunk.choices:
        return None
    choice = chunk.choices[0]
    delta = choice.delta
    calls = tuple(
        ToolCallDelta(
            index=int(call.index or 0),
            id=call.id or None,
            name=(call.function.name or None) if call.function is not None else None,
            arguments=(call.function.arguments or "") if call.function is not None else "",
        )
        for call in (getattr(delta, "tool_calls", None) or ())
    )
    text = delta.content or ""
    reasoning = getattr(delta, "reasoning_content", None) or ""
    if not (text or reasoning or calls or choice.finish_reason):
        return None
    return Piece(text, reasoning=reasoning, tool_calls=calls, finish_reason=choice.finish_reason)


def stream(
    settings: Settings,
    model: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
) -> Iterator[Piece]:
    """Stream a completion: its pieces as they come, then one piece with the call's usage."""
    kwargs: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "drop_params": True,
        "timeout": 120,
    }
    if settings.llm_api_base:
        kwargs["api_base"] = settings.llm_api_base
    if settings.llm_api_key:
        kwargs["api_key"] = settings.llm_api_key
    if model == OFFLINE_MODEL:
        kwargs["delay"] = settings.offline_delay_s
    if tools:
        kwargs["tools"] = tools
        # With tools, litellm first imports its MCP bridge, which needs the `mcp`
        # package (not a dependency of ours); chatsvc runs its own tools.
        kwargs["_skip_mcp_handler"] = True
    response = litellm.completion(**kwargs)
    usage: dict[str, int] | None = None
    try:
        for chunk in response:
            piece = _piece(chunk)
            if piece is not None:
                yield piece
            reported = getattr(chunk, "usage", None)
            if reported is not None and getattr(reported, "completion_tokens", None) is not None:
                usage = {
                    "prompt_tokens": int(reported.prompt_tokens or 0),
                    "completion_tokens": int(reported.completion_tokens or 0),
                }
    finally:
        _close(response)
    if usage is not None:
        # litellm counts tokens itself when the provider sends no usage; its raw
        # chunks tell whether the provider did (in the last one, usually: look there first).
        chunks = getattr(response, "chunks", None) or []
        provided = any(c.get("usage") is not None for c in reversed(chunks))
        yield Piece("", usage, estimated=not provided)


def _close(response: Any) -> None:
    """Release the provider connection of an abandoned stream (best effort)."""
    for attr in ("completion_stream", "response"):
        inner = getattr(response, attr, None)
        close = getattr(inner, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):  # nothing useful to do with a failed close
                close()


def estimate_tokens(text: str) -> int:
    """A provider-independent estimate: about four characters per token."""
    return math.ceil(len(text) / 4)


def readable_error(exc: BaseException) -> str:
    """A one-line description of a provider error for the message's `error` field."""
    name = type(exc).__name__
    message = " ".join(str(exc).split())
    message = re.sub(r"^litellm\.\w+: ", "", message)
    return f"{name}: {message}"[:2000] if message else name


# --- the built-in offline model --------------------------------------------------

OFFLINE_TEMPLATE = (
    "You said: \u201c{question}\u201d. This answer comes from chatsvc's built-in offline model, "
    "which needs no network and no API key. It streams a fixed text at a steady pace, so you "
    "can watch an answer being written: every few words are committed to Postgres, where a "
    "reconnecting browser, another server process or psql can read them while the answer "
    "grows. Set CHATSVC_MODEL to any litellm model name, and CHATSVC_LLM_API_KEY if it needs "
    "one, to talk to a real provider instead."
)


def offline_answer(messages: list[dict[str, str]]) -> str:
    """The deterministic answer to a conversation: it quotes the question being answered."""
    question = ""
    for message in reversed(messages):
        if message["role"] == "user" and message["content"] != CONTINUE_INSTRUCTION:
            question = message["content"]
            break
    question = " ".join(question.split())
    if len(question) > 120:
        question = question[:119] + "\u2026"
    return OFFLINE_TEMPLATE.format(question=question)


def offline_pieces(text: str) -> list[str]:
    """Split text the way a tokenizer-driven stream would: a word or two per chunk."""
    return re.findall(r"\S+\s*|\s+", text)


class OfflineModel(CustomLLM):
    """A litellm custom provider that streams a deterministic answer at a realistic pace."""

    def streaming(self, *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        messages: list[dict[str, str]] = kwargs["messages"]
        delay = float(kwargs.get("optional_params", {}).get("delay", 0.03))
        answer = offline_answer(messages)
        partial = ""
        if messages and messages[-1]["content"] == CONTINUE_INSTRUCTION and len(messages) > 1:
            partial = messages[-2]["content"]
        rest = answer[len(partial) :] if answer.startswith(partial) else answer
        pieces = offline_pieces(rest)
        for index, piece in enumerate(pieces):
            time.sleep(delay)
            yield _chunk(piece, finished=False, index=index)
        prompt_tokens = sum(estimate_tokens(m["content"]) for m in messages)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces),
            "total_tokens": prompt_tokens + len(pieces),
        }
        yield _chunk("", finished=True, index=len(pieces), usage=usage)

    def completion(self, *args: Any, **kwargs: Any) -> Any:
        return litellm.mock_completion(
            model=kwargs["model"],
            messages=kwargs["messages"],
            mock_response=offline_answer(kwargs["messages"]),
        )


def _chunk(
    text: str, *, finished: bool, index: int, usage: dict[str, int] | None = None
) -> GenericStreamingChunk:
    return {
        "text": text,
        "tool_use": None,
        "is_finished": finished,
        "finish_reason": "stop" if finished else "",
        "usage": usage,  # type: ignore[typeddict-item]
        "index": 0,
    }


litellm.custom_provider_map = [
    entry for entry in litellm.custom_provider_map if entry.get("provider") != "chatsvc"
] + [{"provider": "chatsvc", "custom_handler": OfflineModel()}]
