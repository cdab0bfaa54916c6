"""One answer as a client is sent it: its position, and the order of a catch-up.

A Track holds how far a client has been sent an answer's text, its reasoning
and its tool changes. A catch-up read (messages.PartsFrom) is turned into
pieces in the order of the answer's parts, so a client that rebuilds the parts
from events in order gets them right: text and reasoning slices cut where the
layout cuts them, and the current state of each tool part changed since the
position, where that part stands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from chatsvc.engine.messages import PartsFrom
from chatsvc.engine.positions import Position
from chatsvc.errors import InvalidRequest

TEXT_KINDS = ("text", "reasoning")


@dataclass
class Track:
    """How far a client has been sent one answer."""

    message_id: UUID
    offset: int
    epoch: int
    reasoning: int = 0
    tools: int = 0
    # Once the answer has reasoning or tool parts, every id is composite.
    composite: bool = False
    done: bool = False

    @classmethod
    def at(cls, message_id: UUID, position: Position, epoch: int, composite: bool) -> Track:
        """A track that has sent everything up to `position`."""
        return cls(
            message_id,
            position.content,
            epoch,
            position.reasoning,
            position.tools,
            composite or position.composite,
        )

    @property
    def position(self) -> Position:
        """Where the client is: bare while the answer is text alone, composite after."""
        return Position(self.offset, self.reasoning, self.tools, self.composite)


@dataclass(frozen=True)
class Piece:
    """One catch-up event: `delta` or `reasoning` text, or a `tool` part's state.

    `tools` is the tool version a client has all changes up to once it has this
    piece: tool parts are sent in layout order, not in version order, so it is
    one below the least version still to come.
    """

    event: str
    text: str
    part: dict[str, Any] | None
    tools: int


def tool_data(message_id: UUID, part: dict[str, Any]) -> dict[str, Any]:
    """The `tool` event's data for a part as message_parts() shows it."""
    return {"message_id": message_id, **{k: v for k, v in part.items() if k != "type"}}


def layout_entries(state: PartsFrom) -> list[dict[str, Any]]:
    """The layout, or for an answer that kept only its parts, a layout made from them."""
    if state.layout is not None:
        entries = list(state.layout)
    else:
        entries, starts = [], {"text": 0, "reasoning": 0}
        for part in state.parts or []:
            if part["type"] in TEXT_KINDS:
                entries.append({"type": part["type"], "start": starts[part["type"]]})
                starts[part["type"]] += len(part["text"])
            else:
                # Without the layout the version of each change is unknown: a client
                # behind the last change gets every tool part's state again.
                entries.append({**part, "v": state.tool_version})
    for kind in TEXT_KINDS:
        # Text written before the answer had a layout is the start of its kind.
        starts_of_kind = [e["start"] for e in entries if e["type"] == kind]
        if not starts_of_kind or starts_of_kind[0] > 0:
            entries.insert(0, {"type": kind, "start": 0})
    return entries


def catch_up(state: PartsFrom, position: Position) -> list[Piece]:
    """What a client at `position` lacks of the answer read in `state`, in the parts' order."""
    if not state.has_parts:
        return [Piece("delta", state.text, None, position.tools)] if state.text else []
    entries = layout_entries(state)
    tool_parts = {p["tool_call_id"]: p for p in state.parts or [] if p["type"] == "tool"}
    ends = {"text": state.content_length, "reasoning": state.reasoning_length}
    sent = {"text": position.content, "reasoning": position.reasoning}
    after = {"text": state.text, "reasoning": state.reasoning}
    pending = sorted(e["v"] for e in entries if e["type"] == "tool" and e["v"] > position.tools)
    pieces: list[Piece] = []
    for i, entry in enumerate(entries):
        kind = entry["type"]
        if kind == "tool":
            part = tool_parts.get(entry["tool_call_id"])
            if entry["v"] <= position.tools or part is None:
                continue
            pending.remove(entry["v"])
            tools = pending[0] - 1 if pending else state.tool_version
            pieces.append(Piece("tool", "", part, tools))
            continue
        later = [e["start"] for e in entries[i + 1 :] if e["type"] == kind]
        start, stop = max(entry["start"], sent[kind]), later[0] if later else ends[kind]
        text = after[kind][start - sent[kind] : stop - sent[kind]] if stop > start else ""
        if text:
            tools = pending[0] - 1 if pending else state.tool_version
            pieces.append(Piece("delta" if kind == "text" else "reasoning", text, None, tools))
    return pieces


def check_position(position: Position, content: int, reasoning: int, tools: int) -> None:
    """InvalidRequest when a client's position is past what the answer has committed."""
    if position.beyond(content, reasoning, tools):
        raise InvalidRequest(
            f"Position {position} is beyond what is committed "
            f"({content} characters of content, {reasoning} of reasoning, {tools} tool changes)."
        )


def done_data(
    message_id: UUID, status: str, length: int, usage: Any, error: str | None
) -> dict[str, Any]:
    """The `done` event's data (docs/protocol.md)."""
    usage = usage or {}
    data: dict[str, Any] = {
        "message_id": message_id,
        "status": status,
        "content_length": length,
        "usage": {
            "prompt_tokens": int(usage.get("prompt_tokens", 0)),
            "completion_tokens": int(usage.get("completion_tokens", 0)),
        },
    }
    if usage.get("estimated"):
        data["usage"]["estimated"] = True
    if error is not None:
        data["error"] = error
    return data
