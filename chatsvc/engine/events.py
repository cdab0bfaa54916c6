"""Cross-process events: one LISTEN connection per process, routed to local subscribers.

Everything a process must learn from the others travels on one channel as small
JSON payloads sent with NOTIFY in the transaction that made the change, so it is
delivered only once that change is committed ("durable before visible").
Subscribers track offsets and read the database whenever an event is missing,
too large for a payload, or dropped because they fell behind; a lost
notification therefore costs a query, never a gap.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import Connection

from chatsvc import jsonio

log = logging.getLogger(__name__)

CHANNEL = "chatsvc"
# Postgres rejects payloads of 8000 bytes or more; keep a margin.
MAX_PAYLOAD_BYTES = 7800
# A delta whose text would not fit is announced without it; readers fetch it.
MAX_INLINE_TEXT_BYTES = 6000


@dataclass(frozen=True, slots=True)
class MessageCreated:
    """A user message or an answer was inserted."""

    conversation_id: UUID
    message_id: UUID


@dataclass(frozen=True, slots=True)
class Delta:
    """Text [start, end) of a message was committed; `text` is None if too large to carry."""

    conversation_id: UUID
    message_id: UUID
    start: int
    end: int
    text: str | None


@dataclass(frozen=True, slots=True)
class StatusChanged:
    """A streaming answer changed hands (taken over after a crash or handed off)."""

    conversation_id: UUID
    message_id: UUID
    status: str
    epoch: int
    resumed: bool


@dataclass(frozen=True, slots=True)
class Finished:
    """An answer reached a terminal status with this final length."""

    conversation_id: UUID
    message_id: UUID
    status: str
    content_length: int
    usage: dict[str, Any] | None
    error: str | None


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """Someone asked for an answer to stop (the API, or an UPDATE in psql via a trigger)."""

    conversation_id: UUID
    message_id: UUID


@dataclass(frozen=True, slots=True)
class ConversationDeleted:
    """A conversation is gone; its followers stop."""

    conversation_id: UUID


@dataclass(frozen=True, slots=True)
class LeasesReleased:
    """A stopping process released its streams: take them over now rather than at expiry."""


@dataclass(frozen=True, slots=True)
class ProjectEvent:
    """An event for a project room (conversation.created, stream.started, ...)."""

    project_id: UUID
    name: str
    data: dict[str, Any]


def project_event(project_id: UUID, name: str, **data: Any) -> ProjectEvent:
    """A project room event, its data as it will appear in JSON."""
    fields = {"project_id": project_id, **data}
    return ProjectEvent(project_id, name, {k: _plain(v) for k, v in fields.items()})


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | None) else jsonio.default(value)


Event = (
    MessageCreated
    | Delta
    | StatusChanged
    | Finished
    | CancelRequested
    | ConversationDeleted
    | LeasesReleased
    | ProjectEvent
)


def _to_wire(event: Event) -> list[Any]:
    match event:
        case Delta(c, m, start, end, text):
            return ["d", str(c), str(m), start, end, text]
        case MessageCreated(c, m):
            return ["m", str(c), str(m)]
        case StatusChanged(c, m, status, epoch, resumed):
            return ["s", str(c), str(m), status, epoch, resumed]
        case Finished(c, m, status, length, usage, error):
            return ["f", str(c), str(m), status, length, usage, error]
        case CancelRequested(c, m):
            return ["c", str(c), str(m)]
        case ConversationDeleted(c):
            return ["x", str(c)]
        case LeasesReleased():
            return ["r"]
        case ProjectEvent(p, name, data):
            return ["p", str(p), name, data]
    raise TypeError(f"not an event: {event!r}")


def _from_wire(item: list[Any]) -> Event:
    kind = item[0]
    if kind == "d":
        return Delta(UUID(item[1]), UUID(item[2]), int(item[3]), int(item[4]), item[5])
    if kind == "m":
        return MessageCreated(UUID(item[1]), UUID(item[2]))
    if kind == "s":
        return StatusChanged(UUID(item[1]), UUID(item[2]), item[3], int(item[4]), bool(item[5]))
    if kind == "f":
        return Finished(UUID(item[1]), UUID(item[2]), item[3], int(item[4]), item[5], item[6])
    if kind == "c":
        return CancelRequested(UUID(item[1]), UUID(item[2]))
    if kind == "x":
        return ConversationDeleted(UUID(item[1]))
    if kind == "r":
        return LeasesReleased()
    if kind == "p":
        return ProjectEvent(UUID(item[1]), item[2], item[3])
    raise ValueError(f"unknown event kind {kind!r}")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)


def _fitting(event: Event) -> list[Any]:
    """The wire form of an event, stripped of text that would not fit in a payload."""
    wire = _to_wire(event)
    if isinstance(event, Delta) and event.text is not None:
        if len(event.text.encode()) > MAX_INLINE_TEXT_BYTES:
            wire[5] = None
    elif isinstance(event, Finished) and len(_dumps(wire).encode()) > MAX_INLINE_TEXT_BYTES:
        wire[5], wire[6] = None, (event.error or "")[:200]
    return wire


def encode(events: Iterable[Event]) -> list[str]:
    """Pack events into as few payloads as fit under Postgres's limit, in order."""
    payloads: list[str] = []
    batch: list[str] = []
    size = 2
    for event in events:
        item = _dumps(_fitting(event))
        item_size = len(item.encode()) + 1
        if batch and size + item_size > MAX_PAYLOAD_BYTES:
            payloads.append("[" + ",".join(batch) + "]")
            batch, size = [], 2
        batch.append(item)
        size += item_size
    if batch:
        payloads.append("[" + ",".join(batch) + "]")
    return payloads


def decode(payload: str) -> list[Event]:
    """The events of one payload."""
    return [_from_wire(item) for item in json.loads(payload)]


NOTIFY = "SELECT pg_notify(%s, %s)"


def send(conn: Connection[Any], events: Iterable[Event]) -> None:
    """Queue events on the caller's transaction; Postgres delivers them at commit."""
    for payload in encode(events):
        conn.execute(NOTIFY, (CHANNEL, payload))
