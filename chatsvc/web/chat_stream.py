"""One answer as the AI SDK's UI message stream: replayed from `start`, then followed live.

The stream subscribes to the hub *before* it reads the answer, as every
follower does, so whatever is committed after the read reaches it as an event;
it is only ever sent committed text (durable before visible).

The SDK's chunks name parts, and a part is a place in the answer's layout
(engine/parts.py): events alone do not say where one part ends and the next
begins, since one checkpoint may carry text, reasoning and tool changes
together. So events are read in batches (one checkpoint's arrive together), and
only a batch that merely extends the part being sent, and that part is the last
of the layout, goes out from the events' text; anything else, and every gap, is
read from the database at the stream's position and sent in the layout's order.
Each layout entry's `step` (its model call) brings `start-step`/`finish-step`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from flask import Response

from chatsvc.engine.events import Delta, Finished, ReasoningDelta, StatusChanged, ToolChanged
from chatsvc.engine.hub import Closing, Item, Resync, Subscriber
from chatsvc.engine.messages import PartsFrom
from chatsvc.engine.positions import Position
from chatsvc.engine.sources import Sources
from chatsvc.engine.tracks import layout_entries
from chatsvc.errors import Unavailable
from chatsvc.web import chunks

log = logging.getLogger(__name__)

Chunk = Mapping[str, Any]
# A text or reasoning part: its kind and its first offset in that kind (stable
# across reads, unlike its index, so it names the part in every chunk).
PartKey = tuple[str, int]


@dataclass
class ToolSent:
    """How much of one tool part a client has been sent."""

    name: str
    input_length: int = 0
    input_available: bool = False
    ended: bool = False


def _arguments(value: Any) -> Any:
    """A tool call's input: its JSON arguments, or the text the model wrote if not JSON."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


class ChatStream:
    """An answer's UI message chunks for one client, from `start` to its ending."""

    def __init__(self, sources: Sources, message_id: UUID) -> None:
        self.sources = sources
        self.message_id = message_id
        self.sub: Subscriber | None = None
        self.sent = {"text": 0, "reasoning": 0}
        self.open: PartKey | None = None
        # The last entry of the layout as last read: only it can still grow.
        self.last: tuple[str, Any] | None = None
        self.step: int | None = None
        self.tools: dict[str, ToolSent] = {}
        self.epoch = 0
        self.ended = False

    def close(self) -> None:
        """Unsubscribe (idempotent)."""
        if self.sub is not None:
            self.sub.close()
            self.sub = None

    def begin(self) -> list[Chunk]:
        """Subscribe, then `start` and everything committed so far (the caller checked access)."""
        self.sub = self.sources.hub.subscribe(self.message_id)
        try:
            return [chunks.start(self.message_id), *self.read()]
        except BaseException:
            self.close()
            raise

    def chunks(self, first: list[Chunk]) -> Iterator[Chunk | None]:
        """The first chunks, then live ones to the ending; None when a heartbeat is due."""
        assert self.sub is not None
        yield from first
        quiet_since = time.monotonic()
        while not self.ended:
            wait = self.sources.heartbeat_s - (time.monotonic() - quiet_since)
            item = self.sub.get(max(wait, 0.0))
            if item is None:
                yield None
                quiet_since = time.monotonic()
                continue
            # Closing is not an end here, unlike for EventSource, which reconnects by
            # itself: the SDK would take a clean end for the whole answer. Another
            # process takes the answer over and this one hears of it until gunicorn's
            # graceful timeout cuts the connection, which the SDK sees as a drop.
            batch = [one for one in (item, *self.sub.pending()) if not isinstance(one, Closing)]
            out = self.read() if any(isinstance(one, Resync) for one in batch) else self.on(batch)
            if out:
                quiet_since = time.monotonic()
                yield from out

    def on(self, batch: Sequence[Item]) -> list[Chunk]:
        """Chunks for a batch of hub events."""
        mine = [e for e in batch if getattr(e, "message_id", None) == self.message_id]
        out: list[Chunk] = []
        for event in mine:
            if isinstance(event, StatusChanged) and event.epoch > self.epoch:
                self.epoch = event.epoch
                out.append(chunks.status(event.status, event.epoch))
        texts = [e for e in mine if isinstance(e, Delta | ReasoningDelta)]
        if any(isinstance(e, ToolChanged | Finished) for e in mine):
            return out + self.read()
        if not texts:
            return out
        extended = self.extend(texts)
        return out + (extended if extended is not None else self.read())

    def extend(self, texts: list[Delta | ReasoningDelta]) -> list[Chunk] | None:
        """The batch's new text as one delta of the open part, or None if a read must decide."""
        kinds = {"text" if isinstance(e, Delta) else "reasoning" for e in texts}
        part = self.open
        if part is None or len(kinds) != 1:
            return None
        kind, start = part
        if kinds.pop() != kind or self.last != part:
            return None
        sent, pieces = self.sent[kind], []
        for event in sorted(texts, key=lambda e: e.start):
            if event.end <= sent:
                continue
            if event.text is None or event.start > sent:
                return None  # too large to carry, or a gap
            pieces.append(event.text[sent - event.start :])
            sent = event.end
        self.sent[kind] = sent
        return [chunks.part_delta(kind, start, "".join(pieces))] if pieces else []

    def read(self) -> list[Chunk]:
        """What the database has past the stream's position, in the layout's order."""
        state = self.sources.read(
            self.message_id, Position(self.sent["text"], self.sent["reasoning"])
        )
        if state is None:  # deleted with its conversation
            self.ended = True
            return [*self.close_part(), *self.close_step(), chunks.abort("deleted")]
        return self.apply(state)

    def apply(self, state: PartsFrom) -> list[Chunk]:
        """Chunks for what `state` (read at the stream's position) holds that were not sent."""
        self.epoch = max(self.epoch, state.epoch)
        out: list[Chunk] = []
        entries: list[dict[str, Any]] = (
            layout_entries(state) if state.has_parts else [{"type": "text", "start": 0}]
        )
        parts = {p["tool_call_id"]: p for p in state.parts or [] if p["type"] == "tool"}
        ends = {"text": state.content_length, "reasoning": state.reasoning_length}
        read_at = dict(self.sent)
        after = {"text": state.text, "reasoning": state.reasoning}
        for i, entry in enumerate(entries):
            kind, step = entry["type"], int(entry.get("step", 0))
            if kind == "tool":
                part = parts.get(entry["tool_call_id"])
                if part is not None:
                    out += self.tool(step, part)
                continue
            later = [e["start"] for e in entries[i + 1 :] if e["type"] == kind]
            stop = later[0] if later else ends[kind]
            begin = max(entry["start"], self.sent[kind])
            if stop > begin:
                text = after[kind][begin - read_at[kind] : stop - read_at[kind]]
                out += self.enter(kind, entry["start"], step)
                out.append(chunks.part_delta(kind, entry["start"], text))
                self.sent[kind] = stop
        if entries:
            last = entries[-1]
            self.last = (last["type"], last.get("start", last.get("tool_call_id")))
        if state.is_terminal:
            self.ended = True
            out += self.close_part() + self.close_step()
            ending = chunks.ending(state.status, state.usage, state.content_length, state.error)
            out += ending
        return out

    def enter(self, kind: str, start: int, step: int) -> list[Chunk]:
        """Open the part at (kind, start), closing the open one and moving to its step."""
        if self.open == (kind, start):
            return []
        out = self.close_part() + self.enter_step(step)
        out.append(chunks.part_start(kind, start))
        self.open = (kind, start)
        return out

    def enter_step(self, step: int) -> list[Chunk]:
        """`finish-step` for the step being sent, if another, and `start-step` for this one."""
        if self.step == step:
            return []
        out = self.close_step()
        self.step = step
        return [*out, chunks.start_step()]

    def close_step(self) -> list[Chunk]:
        """`finish-step` for the step being sent, if any."""
        if self.step is None:
            return []
        self.step = None
        return [chunks.finish_step()]

    def close_part(self) -> list[Chunk]:
        """The end chunk of the open text or reasoning part, if any."""
        if self.open is None:
            return []
        kind, start = self.open
        self.open = None
        return [chunks.part_end(kind, start)]

    def tool(self, step: int, part: dict[str, Any]) -> list[Chunk]:
        """Chunks for the part of a tool call's state the client has not had."""
        call_id, name, state = part["tool_call_id"], part["name"], part["state"]
        sent = self.tools.get(call_id)
        out: list[Chunk] = []
        if sent is None:
            if not name:
                return []  # the model has not named the tool yet
            out += self.close_part() + self.enter_step(step)
            out.append(chunks.tool_input_start(call_id, name))
            sent = self.tools[call_id] = ToolSent(name)
        if state == "input-streaming":
            text = part.get("input")
            if isinstance(text, str) and len(text) > sent.input_length:
                out.append(chunks.tool_input_delta(call_id, text[sent.input_length :]))
                sent.input_length = len(text)
            return out
        if not sent.input_available:
            sent.input_available = True
            arguments = _arguments(part.get("input"))
            out.append(chunks.tool_input_available(call_id, name, arguments))
        if sent.ended:
            return out
        if state == "output-available":
            sent.ended = True
            out.append(chunks.tool_output(call_id, part.get("output")))
        elif state == "output-error":
            sent.ended = True
            out.append(chunks.tool_error(call_id, part.get("error") or ""))
        return out


def respond(stream: ChatStream, first: list[Chunk]) -> Response:
    """The UI message stream response: the chunks as `data:` events, then `data: [DONE]`."""

    def body() -> Iterator[str]:
        try:
            for chunk in stream.chunks(first):
                yield chunks.PING if chunk is None else chunks.encode(chunk)
        except Unavailable:
            # The database went away mid-stream: end without [DONE]; the client's
            # resume (GET /api/chat/{id}/stream) replays the answer from `start`.
            log.info("ending a chat stream: database unavailable")
            return
        if stream.ended:
            yield chunks.DONE

    response = Response(body(), mimetype="text/event-stream", headers=chunks.HEADERS)
    # Runs when the server closes the response, even if the body never started.
    response.call_on_close(stream.close)
    return response
