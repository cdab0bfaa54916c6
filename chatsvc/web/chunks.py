"""The Vercel AI SDK's UI message stream, as chatsvc writes it: the one definition of its chunks.

`POST /api/chat` and `GET /api/chat/{id}/stream` answer with Server-Sent Events
whose `data:` is one JSON chunk each, ending with `data: [DONE]`, under the
header `x-vercel-ai-ui-message-stream: v1` (docs/ai-sdk.md). The chunk types
and field names are the SDK's (`ai` 5 and later, `uiMessageChunkSchema`); each
is declared here once as a TypedDict, from which /openapi.json describes them,
and built by the functions below, which everything else calls.

Part ids are `text-<n>` and `reasoning-<n>`, `n` being the part's first offset
in the answer's text or reasoning, so a replay names every part as the first
reading did. Tool
chunks carry `providerExecuted: true`: chatsvc runs the tool, never the browser.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import Field
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from chatsvc import jsonio

HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "x-vercel-ai-ui-message-stream": "v1",
}
DONE = "data: [DONE]\n\n"
PING = ": ping\n\n"


class StartChunk(TypedDict):
    """The answer begins; `messageId` is the stored assistant message's id."""

    type: Literal["start"]
    messageId: str


class StartStepChunk(TypedDict):
    """A model call begins (the parts that follow, to `finish-step`, are its)."""

    type: Literal["start-step"]


class FinishStepChunk(TypedDict):
    """A model call's parts are all sent."""

    type: Literal["finish-step"]


class TextStartChunk(TypedDict):
    """A text part begins."""

    type: Literal["text-start"]
    id: str


class TextDeltaChunk(TypedDict):
    """Text appended to a text part."""

    type: Literal["text-delta"]
    id: str
    delta: str


class TextEndChunk(TypedDict):
    """A text part is complete."""

    type: Literal["text-end"]
    id: str


class ReasoningStartChunk(TypedDict):
    """A reasoning part begins."""

    type: Literal["reasoning-start"]
    id: str


class ReasoningDeltaChunk(TypedDict):
    """Reasoning appended to a reasoning part."""

    type: Literal["reasoning-delta"]
    id: str
    delta: str


class ReasoningEndChunk(TypedDict):
    """A reasoning part is complete."""

    type: Literal["reasoning-end"]
    id: str


class ToolInputStartChunk(TypedDict):
    """The model began a tool call."""

    type: Literal["tool-input-start"]
    toolCallId: str
    toolName: str
    providerExecuted: bool


class ToolInputDeltaChunk(TypedDict):
    """More of a tool call's arguments, as JSON text."""

    type: Literal["tool-input-delta"]
    toolCallId: str
    inputTextDelta: str


class ToolInputAvailableChunk(TypedDict):
    """A tool call's arguments are complete: the call runs."""

    type: Literal["tool-input-available"]
    toolCallId: str
    toolName: str
    input: Any
    providerExecuted: bool


class ToolOutputAvailableChunk(TypedDict):
    """A tool call's result."""

    type: Literal["tool-output-available"]
    toolCallId: str
    output: Any
    providerExecuted: bool


class ToolOutputErrorChunk(TypedDict):
    """A tool call failed, timed out, was abandoned, or has no known outcome after a crash."""

    type: Literal["tool-output-error"]
    toolCallId: str
    errorText: str
    providerExecuted: bool


class ChatUsage(TypedDict):
    """Tokens the answer used, summed over its model calls."""

    prompt_tokens: int
    completion_tokens: int
    estimated: NotRequired[bool]


class ChatMetadata(TypedDict):
    """The answer as stored once it ended (the message object's fields of the same names)."""

    status: Literal["completed", "cancelled", "failed", "interrupted"]
    usage: ChatUsage
    content_length: int


class MessageMetadataChunk(TypedDict):
    """The answer's ending, as message metadata, just before `finish`, `abort` or `error`."""

    type: Literal["message-metadata"]
    messageMetadata: ChatMetadata


class FinishChunk(TypedDict):
    """The answer ended: `stop` when completed, `interrupted` when interrupted."""

    type: Literal["finish"]
    finishReason: Literal["stop", "interrupted"]


class AbortChunk(TypedDict):
    """The answer was cancelled."""

    type: Literal["abort"]
    reason: str


class ErrorChunk(TypedDict):
    """The answer failed (the provider or the model call failed)."""

    type: Literal["error"]
    errorText: str


class ChatStatusData(TypedDict):
    """`status`, `epoch` and `resumed` of the conversation stream's `status` event."""

    status: str
    epoch: int
    resumed: bool


class StatusChunk(TypedDict):
    """Transient (not kept in the message): the answer was taken over and goes on."""

    type: Literal["data-chatsvc-status"]
    data: ChatStatusData
    transient: Literal[True]


UIMessageChunk = Annotated[
    StartChunk
    | StartStepChunk
    | FinishStepChunk
    | TextStartChunk
    | TextDeltaChunk
    | TextEndChunk
    | ReasoningStartChunk
    | ReasoningDeltaChunk
    | ReasoningEndChunk
    | ToolInputStartChunk
    | ToolInputDeltaChunk
    | ToolInputAvailableChunk
    | ToolOutputAvailableChunk
    | ToolOutputErrorChunk
    | MessageMetadataChunk
    | FinishChunk
    | AbortChunk
    | ErrorChunk
    | StatusChunk,
    Field(discriminator="type"),
]


def encode(chunk: Any) -> str:
    """One chunk as an SSE event: `data: <JSON>` on one line."""
    return f"data: {jsonio.dumps(chunk)}\n\n"


def part_id(kind: str, start: int) -> str:
    """The id of the text or reasoning part that starts at `start` in its kind."""
    return f"{kind}-{start}"


def start(message_id: Any) -> StartChunk:
    """`start` for the stored answer."""
    return {"type": "start", "messageId": str(message_id)}


def start_step() -> StartStepChunk:
    """`start-step`."""
    return {"type": "start-step"}


def finish_step() -> FinishStepChunk:
    """`finish-step`."""
    return {"type": "finish-step"}


def part_start(kind: str, start: int) -> TextStartChunk | ReasoningStartChunk:
    """`text-start` or `reasoning-start`."""
    if kind == "text":
        return {"type": "text-start", "id": part_id(kind, start)}
    return {"type": "reasoning-start", "id": part_id(kind, start)}


def part_delta(kind: str, start: int, text: str) -> TextDeltaChunk | ReasoningDeltaChunk:
    """`text-delta` or `reasoning-delta`."""
    if kind == "text":
        return {"type": "text-delta", "id": part_id(kind, start), "delta": text}
    return {"type": "reasoning-delta", "id": part_id(kind, start), "delta": text}


def part_end(kind: str, start: int) -> TextEndChunk | ReasoningEndChunk:
    """`text-end` or `reasoning-end`."""
    if kind == "text":
        return {"type": "text-end", "id": part_id(kind, start)}
    return {"type": "reasoning-end", "id": part_id(kind, start)}


def tool_input_start(call_id: str, name: str) -> ToolInputStartChunk:
    """`tool-input-start`."""
    return {
        "type": "tool-input-start",
        "toolCallId": call_id,
        "toolName": name,
        "providerExecuted": True,
    }


def tool_input_delta(call_id: str, text: str) -> ToolInputDeltaChunk:
    """`tool-input-delta`."""
    return {"type": "tool-input-delta", "toolCallId": call_id, "inputTextDelta": text}


def tool_input_available(call_id: str, name: str, arguments: Any) -> ToolInputAvailableChunk:
    """`tool-input-available`."""
    return {
        "type": "tool-input-available",
        "toolCallId": call_id,
        "toolName": name,
        "input": arguments,
        "providerExecuted": True,
    }


def tool_output(call_id: str, output: Any) -> ToolOutputAvailableChunk:
    """`tool-output-available`."""
    return {
        "type": "tool-output-available",
        "toolCallId": call_id,
        "output": output,
        "providerExecuted": True,
    }


def tool_error(call_id: str, error: str) -> ToolOutputErrorChunk:
    """`tool-output-error`."""
    return {
        "type": "tool-output-error",
        "toolCallId": call_id,
        "errorText": error,
        "providerExecuted": True,
    }


def abort(reason: str) -> AbortChunk:
    """`abort`: the answer was cancelled (or deleted)."""
    return {"type": "abort", "reason": reason}


def status(status: str, epoch: int) -> StatusChunk:
    """The transient `data-chatsvc-status` chunk of a takeover."""
    return {
        "type": "data-chatsvc-status",
        "data": {"status": status, "epoch": epoch, "resumed": True},
        "transient": True,
    }


def ending(
    status: str, usage: dict[str, Any] | None, content_length: int, error: str | None
) -> list[FinishChunk | AbortChunk | ErrorChunk | MessageMetadataChunk]:
    """`message-metadata`, then `finish`, `abort` or `error` by the answer's status."""
    usage = usage or {}
    counted: ChatUsage = {
        "prompt_tokens": int(usage.get("prompt_tokens", 0)),
        "completion_tokens": int(usage.get("completion_tokens", 0)),
    }
    if usage.get("estimated"):
        counted["estimated"] = True
    metadata: ChatMetadata = {
        "status": status,  # type: ignore[typeddict-item]
        "usage": counted,
        "content_length": content_length,
    }
    last: FinishChunk | AbortChunk | ErrorChunk
    if status == "cancelled":
        last = abort("cancelled")
    elif status == "failed":
        last = {"type": "error", "errorText": error or "The answer failed."}
    elif status == "interrupted":
        last = {"type": "finish", "finishReason": "interrupted"}
    else:
        last = {"type": "finish", "finishReason": "stop"}
    return [{"type": "message-metadata", "messageMetadata": metadata}, last]
