"""The order of an answer's parts while it is written: its layout.

An answer's text and reasoning are each one stream of code points (stored as
chunks of their kind); its parts say where each stream is cut and where the
tool calls stand between the pieces. The layout is that list, one entry a part,
in the form `messages.layout` stores and `message_parts()` reads:

    {"type": "reasoning" | "text", "step": n, "start": offset in its kind}
    {"type": "tool", "step": n, "tool_call_id", "name", "input_text", "complete", "v"}

`step` is the model call that produced the part. An answer of text alone from
its first model call has no layout (None): the hot path of a plain answer never
writes one. Each change of a tool part increments `version`, and the entry
keeps the version of its last change in `v`, so a client that has seen changes
up to some version is sent the current state of every tool part changed since.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

Entry = dict[str, Any]


@dataclass
class Layout:
    """An answer's parts as its owner writes them, with the length of each stream."""

    entries: list[Entry] | None = None
    content_length: int = 0
    reasoning_length: int = 0
    version: int = 0
    _calls: dict[tuple[int, int], Entry] = field(default_factory=dict, repr=False)

    @classmethod
    def restore(
        cls,
        entries: list[Entry] | None,
        content_length: int,
        reasoning_length: int,
        version: int,
    ) -> Layout:
        """The layout as committed, for the process that takes an answer over."""
        return cls(copy.deepcopy(entries), content_length, reasoning_length, version)

    def text(self, step: int, text: str) -> None:
        """Append answer text produced by model call `step`."""
        if text:
            if self.entries is not None or step > 0:
                self._stream_part("text", step, self.content_length)
            self.content_length += len(text)

    def reasoning(self, step: int, text: str) -> None:
        """Append reasoning produced by model call `step`."""
        if text:
            self._stream_part("reasoning", step, self.reasoning_length)
            self.reasoning_length += len(text)

    def tool_fragment(
        self, step: int, index: int, tool_call_id: str | None, name: str | None, arguments: str
    ) -> Entry:
        """Apply a streamed fragment of the `index`-th tool call of model call `step`."""
        entry = self._calls.get((step, index))
        if entry is None:
            call_id = tool_call_id or f"call_{step}_{index}"
            if any(e["tool_call_id"] == call_id for e in self.tools()):
                # A model that reuses an id: the ledger and the parts need one per call.
                call_id = f"{call_id}_{step}_{index}"
            entry = {
                "type": "tool",
                "step": step,
                "tool_call_id": call_id,
                "name": name or "",
                "input_text": "",
                "complete": False,
                "v": 0,
            }
            self._entries().append(entry)
            self._calls[(step, index)] = entry
        elif name and not entry["name"]:
            entry["name"] = name
        entry["input_text"] += arguments
        self.changed(entry)
        return entry

    def complete(self, step: int) -> list[Entry]:
        """The model call ended: its tool calls have all their input."""
        done = [e for e in self.tools() if e["step"] == step and not e["complete"]]
        for entry in done:
            entry["complete"] = True
            self.changed(entry)
        return done

    def changed(self, entry: Entry) -> None:
        """Record a change of a tool part (its input grew, or its call moved on)."""
        self.version += 1
        entry["v"] = self.version

    def tools(self) -> list[Entry]:
        """The tool parts, in order."""
        return [e for e in self.entries or () if e["type"] == "tool"]

    def snapshot(self) -> list[Entry] | None:
        """A copy of the entries, as the next checkpoint will store them."""
        return copy.deepcopy(self.entries)

    def _entries(self) -> list[Entry]:
        if self.entries is None:
            # The first part that is not text from the first call: the text so
            # far becomes an explicit part.
            self.entries = [{"type": "text", "step": 0, "start": 0}] if self.content_length else []
        return self.entries

    def _stream_part(self, kind: str, step: int, start: int) -> None:
        entries = self._entries()
        last = entries[-1] if entries else None
        if last is None or last["type"] != kind or last["step"] != step:
            entries.append({"type": kind, "step": step, "start": start})
