"""Positions in a stream as clients send them back: an offset, a composite, or a Cursor.

One strict parser, so every route and transport accepts the same spellings: a
non-negative decimal integer of ASCII digits (no sign, no spaces, no
underscores), three of them joined by dots, and, for a conversation stream, a
message UUID and a colon before either.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from chatsvc.errors import InvalidRequest

# Longer than any text Postgres can hold; guards int() against absurd input.
MAX_DIGITS = 12


def parse_offset(raw: str, name: str) -> int:
    """A non-negative decimal integer, strictly; InvalidRequest naming `name` otherwise."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > MAX_DIGITS:
        raise InvalidRequest(f"{name} must be a non-negative integer.")
    return int(raw)


@dataclass(frozen=True)
class Position:
    """Where a client is in an answer: its text, its reasoning, and its tool changes.

    An answer of text alone is positioned by a bare offset in its content, as
    it always was. Once an answer has reasoning or tool parts, every event's id
    is `<content>.<reasoning>.<tools>`: code points of text and of reasoning
    sent, and how many changes of its tool parts were sent. A bare integer
    always means a content offset with nothing else sent yet.
    """

    content: int
    reasoning: int = 0
    tools: int = 0
    composite: bool = False

    @classmethod
    def parse(cls, raw: str, name: str) -> Position:
        """A bare offset or `<content>.<reasoning>.<tools>`; InvalidRequest naming `name`."""
        fields = raw.split(".")
        if len(fields) == 1:
            return cls(parse_offset(raw, name))
        if len(fields) != 3:
            raise InvalidRequest(
                f"{name} must be an offset or '<content>.<reasoning>.<tools>' as sent by a stream."
            )
        content, reasoning, tools = (parse_offset(field, name) for field in fields)
        return cls(content, reasoning, tools, composite=True)

    def beyond(self, content: int, reasoning: int, tools: int) -> bool:
        """Whether any component is past what the answer has committed."""
        return self.content > content or self.reasoning > reasoning or self.tools > tools

    def at(self, content: int, reasoning: int, tools: int) -> bool:
        """Whether it is this point (a bare offset is at no reasoning or tool change)."""
        return (self.content, self.reasoning, self.tools) == (content, reasoning, tools)

    def __str__(self) -> str:
        if not self.composite:
            return str(self.content)
        return f"{self.content}.{self.reasoning}.{self.tools}"


@dataclass(frozen=True)
class Cursor:
    """A conversation stream position: `<message_id>:<position>` (a Position as below)."""

    message_id: UUID
    position: Position

    @classmethod
    def parse(cls, raw: str) -> Cursor:
        """Parse a Last-Event-ID, raising InvalidRequest when it is not one of ours."""
        message_id, sep, position = raw.rpartition(":")
        try:
            if not sep:
                raise ValueError(raw)
            uuid = UUID(message_id)
        except ValueError:
            raise InvalidRequest(
                "Last-Event-ID must be '<message_id>:<position>' as sent by this stream."
            ) from None
        return cls(uuid, Position.parse(position, "The position in Last-Event-ID"))

    def __str__(self) -> str:
        return f"{self.message_id}:{self.position}"
