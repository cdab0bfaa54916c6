"""Every LLM call, through litellm with stream=True, and the built-in offline model."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
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
from chatsvc.engine.builtin_tools import CURRENT_TIME
from chatsvc.engine.prompts import CONTINUE_INSTRUCTION

# litellm's per-chunk logging runs in a thread pool that breaks under gevent.
litellm.disable_streaming_logging = True
litellm.suppress_debug_info = True
litellm.telemetry = False
# litellm gives its loggers a handler and format of its own: chatsvc's logging
# (chatsvc/logs.py) writes every line, in CHATSVC_LOG_FORMAT.
for _name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
    logging.getLogger(_name).handlers.clear()
    logging.getLogger(_name).setLevel(logging.WARNING)


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


def warm_up() -> float:
    """Make litellm's first streamed calls before the process serves; the seconds it took.

    litellm imports and builds much of itself on its first call (the OpenAI client
    and its types, the stream wrapper): ~1 s of CPU on a 2-core machine, in blocks
    of up to a quarter of a second, which in a worker would stall every stream it
    has and, with the loop's lag over its limit, refuse answers (pressure.py) just
    after a deploy, when the new workers take over the old ones' answers. So a
    worker makes two calls first: one answered by litellm's mock (the stream
    wrapper), and one to a closed port on this machine, refused at once (the
    OpenAI client, the path most providers take). Neither reaches a model provider."""
    started = time.monotonic()
    messages = [{"role": "user", "content": "warm-up"}]
    common = {"model": "openai/chatsvc-warm-up", "messages": messages, "stream": True}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]  # no one listens once it is closed
    for extra in (
        {"mock_response": "warm-up", "stream_options": {"include_usage": True}},
        {"api_base": f"http://127.0.0.1:{closed}/v1", "api_key": "-", "max_retries": 0},
    ):
        with contextlib.suppress(Exception):
            for _ in litellm.completion(**common, **extra, timeout=5):
                pass
    return time.monotonic() - started


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
        "timeout": settings.llm_timeout_s,
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


def provider_of(model: str) -> str | None:
    """The provider litellm would call for a model name, or None when it cannot tell."""
    try:
        return str(litellm.get_llm_provider(model)[1])
    except litellm.exceptions.BadRequestError:
        return None


def missing_credentials(settings: Settings, model: str) -> list[str]:
    """The environment variables litellm's own check says a model's provider still needs."""
    if model == OFFLINE_MODEL:
        return []
    found = litellm.validate_environment(
        model, api_key=settings.llm_api_key, api_base=settings.llm_api_base
    )
    return [str(name) for name in found.get("missing_keys") or ()]


def estimate_tokens(text: str) -> int:
    """A provider-independent estimate: about four characters per token."""
    return math.ceil(len(text) / 4)


# --- the built-in offline model --------------------------------------------------

OFFLINE_TEMPLATE = (
    "You said: \u201c{question}\u201d. {told}This answer comes from chatsvc's built-in offline "
    "model, which needs no network and no API key. It streams a fixed text at a steady pace, so "
    "you can watch an answer being written: every few words are committed to Postgres, where a "
    "reconnecting browser, another server process or psql can read them while the answer "
    "grows.\n\n"
    "Try it: open this conversation in a second tab, or on another server process of the same "
    "database, and both show the same words at the same time. Reload the page in the middle of "
    "the answer and it picks up where it was, because the text you see is the text that is "
    "committed, never more. Stop the answer with the Stop button and it ends as cancelled with "
    "the words it had; press Continue and it goes on from exactly there. Kill the process that "
    "writes it and another process takes the answer over when its lease runs out, and appends "
    "to the same text at the same offsets, so no client ever has to take a word back.\n\n"
    "Ask it what time it is and it calls its one built-in tool, current_time, the way a real "
    "model calls yours: the call is recorded in the tool_calls table before it runs, its "
    "result is committed before the model is asked again, and the answer shows the call as a "
    "card with its input and its output.\n\n"
    "From psql, SELECT content_length FROM active_streams shows an answer growing, "
    "message_parts(m) shows its reasoning, text and tool calls in order, and an UPDATE of "
    "cancel_requested_at stops it within a checkpoint.\n\n"
    "Set CHATSVC_MODEL to any litellm model name, and CHATSVC_LLM_API_KEY if it needs one, to "
    "talk to a real provider instead; set CHATSVC_TOOLS_FILE to give it tools of your own."
)

OFFLINE_TOOL_CALL_ID = "call_offline_time"


def _question(messages: list[dict[str, Any]]) -> tuple[str, int]:
    """The question being answered, and where it is in the prompt."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message["role"] == "user" and message["content"] != CONTINUE_INSTRUCTION:
            return str(message["content"]), index
    return "", -1


def _tool_results(messages: list[dict[str, Any]], since: int) -> list[str]:
    return [str(m.get("content")) for m in messages[since + 1 :] if m["role"] == "tool"]


def offline_wants_time(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> bool:
    """Whether the offline model calls current_time: asked the time, offered it, not yet told."""
    question, at = _question(messages)
    offered = any(t.get("function", {}).get("name") == CURRENT_TIME for t in tools or ())
    asked = re.search(r"\b(time|clock)\b", question, re.IGNORECASE) is not None
    return offered and asked and not _tool_results(messages, at)


def offline_answer(messages: list[dict[str, Any]]) -> str:
    """The deterministic answer to a conversation: it quotes the question being answered."""
    question, at = _question(messages)
    question = " ".join(question.split())
    if len(question) > 120:
        question = question[:119] + "\u2026"
    told = "".join(f"The current_time tool says: {r}. " for r in _tool_results(messages, at))
    return OFFLINE_TEMPLATE.format(question=question, told=told)


def offline_pieces(text: str) -> list[str]:
    """Split text the way a tokenizer-driven stream would: a word or two per chunk."""
    return re.findall(r"\S+\s*|\s+", text)


class OfflineModel(CustomLLM):
    """A litellm custom provider that streams a deterministic answer at a realistic pace."""

    def streaming(self, *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        messages: list[dict[str, Any]] = kwargs["messages"]
        optional = kwargs.get("optional_params", {})
        delay = float(optional.get("delay", 0.03))
        prompt_tokens = sum(estimate_tokens(str(m.get("content") or "")) for m in messages)
        if offline_wants_time(messages, optional.get("tools")):
            time.sleep(delay)
            call = {
                "id": OFFLINE_TOOL_CALL_ID,
                "type": "function",
                "function": {"name": CURRENT_TIME, "arguments": "{}"},
                "index": 0,
            }
            yield _chunk("", finished=False, index=0, tool_use=call)
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 1}
            yield _chunk("", finished=True, index=1, usage=usage, reason="tool_calls")
            return
        answer = offline_answer(messages)
        partial = ""
        if messages and messages[-1]["content"] == CONTINUE_INSTRUCTION and len(messages) > 1:
            partial = str(messages[-2]["content"] or "")
        rest = answer[len(partial) :] if answer.startswith(partial) else answer
        pieces = offline_pieces(rest)
        for index, piece in enumerate(pieces):
            time.sleep(delay)
            yield _chunk(piece, finished=False, index=index)
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
    text: str,
    *,
    finished: bool,
    index: int,
    usage: dict[str, int] | None = None,
    tool_use: dict[str, Any] | None = None,
    reason: str = "stop",
) -> GenericStreamingChunk:
    return {
        "text": text,
        "tool_use": tool_use,  # type: ignore[typeddict-item]
        "is_finished": finished,
        "finish_reason": reason if finished else "",
        "usage": usage,  # type: ignore[typeddict-item]
        "index": 0,
    }


litellm.custom_provider_map = [
    entry for entry in litellm.custom_provider_map if entry.get("provider") != "chatsvc"
] + [{"provider": "chatsvc", "custom_handler": OfflineModel()}]
