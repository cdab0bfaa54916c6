"""Cross-process events and their one wire format: JSON payloads on one NOTIFY channel.

Everything a process must learn from the others travels on one channel as small
JSON payloads sent with NOTIFY in the transaction that made the change, so it is
delivered only once that change is committed ("durable before visible").
Subscribers track offsets and read the database whenever an event is missing,
too large for a payload, or dropped because they fell behind; a lost
notification therefore costs a query, never a gap.

This module owns the format and its size limits. A payload is a JSON array of
items, one per event, each a JSON array whose first element names the kind
(`item`). Items are built here, fitted so that any one travels alone, and packed
in order into payloads under Postgres's limit (`pack`). Two producers live in
SQL, and only join items this module built or defined:

- the checkpoint statement (engine/writes.py) receives each stream's prebuilt
  item and payload number, and joins the items of the rows it actually wrote:
  a fenced row drops out, so a payload only ever shrinks from what `pack` made;
- the trigger `chatsvc_notify_cancel` (sql/migrations/0001.initial.sql) sends
  `[["c", conversation_id, message_id]]`, a `CancelRequested` as `item` makes
  it; tests/integration/test_schema.py fires it and reads it with `decode`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import Connection

from chatsvc import jsonio
from chatsvc.engine.statements import Statement, nothing

log = logging.getLogger(__name__)

CHANNEL = "chatsvc"
# Postgres rejects a payload of this many bytes or more. Sizes here are UTF-8
# bytes, as a UTF8 database counts them.
PAYLOAD_LIMIT_BYTES = 8000
# What a payload may take, with a margin below the limit.
MAX_PAYLOAD_BYTES = 7800
# An item fits alone in a payload between its brackets.
MAX_ITEM_BYTES = MAX_PAYLOAD_BYTES - 2
# How much of an error a Finished keeps when it has to be trimmed to fit.
TRIMMED_ERROR_CHARS = 200


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
class ReasoningDelta:
    """Reasoning [start, end) of an answer was committed; `text` is None if too large to carry.

    Offsets count code points in the answer's reasoning (its reasoning parts
    concatenated), as a Delta's count them in its content.
    """

    conversation_id: UUID
    message_id: UUID
    start: int
    end: int
    text: str | None


@dataclass(frozen=True, slots=True)
class ToolChanged:
    """A tool part of an answer changed, making the answer's tool version `version`.

    `part` is the part as the API shows it (type, tool_call_id, name, state,
    input, output or error); None when too large to carry: readers fetch it.
    """

    conversation_id: UUID
    message_id: UUID
    version: int
    tool_call_id: str
    part: dict[str, Any] | None


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
class BranchChanged:
    """A conversation shows another branch, ending at `leaf_id`, other than by growing
    (a regeneration, an edit, a branch switch, a continuation on another branch)."""

    conversation_id: UUID
    leaf_id: UUID


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
class AccessRevoked:
    """A user was disabled or their tokens revoked: their open streams and sockets end."""

    user_id: UUID


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


@dataclass(frozen=True, slots=True)
class UserEvent:
    """An event for one user's room about their private conversations (or their memberships)."""

    user_id: UUID
    name: str
    data: dict[str, Any]


def room_event(
    project_id: UUID | None, owner_id: UUID, name: str, **data: Any
) -> ProjectEvent | UserEvent:
    """A conversation's room event: its project's room, or its owner's for a private one.

    A user's room (GET /api/events) follows both: the user's own key and the
    rooms of the user's projects, so each event is sent once.
    """
    if project_id is not None:
        return project_event(project_id, name, **data)
    fields = {"project_id": None, **data}
    return UserEvent(owner_id, name, {k: _plain(v) for k, v in fields.items()})


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | None) else jsonio.default(value)


Event = (
    MessageCreated
    | Delta
    | ReasoningDelta
    | ToolChanged
    | StatusChanged
    | Finished
    | BranchChanged
    | CancelRequested
    | ConversationDeleted
    | LeasesReleased
    | AccessRevoked
    | ProjectEvent
    | UserEvent
)


# One branch per event kind: a flat table, however many kinds there are.
def _to_wire(event: Event) -> list[Any]:  # noqa: C901
    match event:
        case Delta(c, m, start, end, text):
            return ["d", str(c), str(m), start, end, text]
        case ReasoningDelta(c, m, start, end, text):
            return ["h", str(c), str(m), start, end, text]
        case ToolChanged(c, m, version, call, part):
            return ["t", str(c), str(m), version, call, part]
        case MessageCreated(c, m):
            return ["m", str(c), str(m)]
        case StatusChanged(c, m, status, epoch, resumed):
            return ["s", str(c), str(m), status, epoch, resumed]
        case Finished(c, m, status, length, usage, error):
            return ["f", str(c), str(m), status, length, usage, error]
        case BranchChanged(c, leaf):
            return ["b", str(c), str(leaf)]
        case CancelRequested(c, m):
            return ["c", str(c), str(m)]
        case ConversationDeleted(c):
            return ["x", str(c)]
        case LeasesReleased():
            return ["r"]
        case AccessRevoked(u):
            return ["a", str(u)]
        case ProjectEvent(key, name, data) | UserEvent(key, name, data):
            return ["p" if isinstance(event, ProjectEvent) else "u", str(key), name, data]
    raise TypeError(f"not an event: {event!r}")


def _from_wire(item: list[Any]) -> Event:  # noqa: C901 - one branch per kind
    kind = item[0]
    if kind == "d":
        return Delta(UUID(item[1]), UUID(item[2]), int(item[3]), int(item[4]), item[5])
    if kind == "h":
        return ReasoningDelta(UUID(item[1]), UUID(item[2]), int(item[3]), int(item[4]), item[5])
    if kind == "t":
        return ToolChanged(UUID(item[1]), UUID(item[2]), int(item[3]), item[4], item[5])
    if kind == "m":
        return MessageCreated(UUID(item[1]), UUID(item[2]))
    if kind == "s":
        return StatusChanged(UUID(item[1]), UUID(item[2]), item[3], int(item[4]), bool(item[5]))
    if kind == "f":
        return Finished(UUID(item[1]), UUID(item[2]), item[3], int(item[4]), item[5], item[6])
    if kind == "b":
        return BranchChanged(UUID(item[1]), UUID(item[2]))
    if kind == "c":
        return CancelRequested(UUID(item[1]), UUID(item[2]))
    if kind == "x":
        return ConversationDeleted(UUID(item[1]))
    if kind == "r":
        return LeasesReleased()
    if kind == "a":
        return AccessRevoked(UUID(item[1]))
    if kind in ("p", "u"):
        room = ProjectEvent if kind == "p" else UserEvent
        return room(UUID(item[1]), item[2], item[3])
    raise ValueError(f"unknown event kind {kind!r}")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)


def _size(text: str) -> int:
    return len(text.encode())


def item(event: Event, *, small: bool = False) -> str:
    """One event as it travels: a JSON array of at most MAX_ITEM_BYTES bytes.

    With `small`, a delta or tool change goes without its text or part.
    """
    wire = _to_wire(event)
    text = _dumps(wire)
    # Bytes, escapes included: a control character takes six ("\u0002").
    if _size(text) <= MAX_ITEM_BYTES and not (
        small and isinstance(event, Delta | ReasoningDelta | ToolChanged)
    ):
        return text
    if isinstance(event, Delta | ReasoningDelta | ToolChanged):
        wire[5] = None  # readers fetch the text or the part from the table
    elif isinstance(event, Finished):
        # Without usage, readers take the ending from the row (see followers.py).
        wire[5], wire[6] = None, (event.error or "")[:TRIMMED_ERROR_CHARS]
    else:
        raise ValueError(f"event too large for a notification: {event!r}")
    return _dumps(wire)


def joined(events: Sequence[Event]) -> str | None:
    """The items of one stream's events in one string (None for none), within MAX_ITEM_BYTES.

    A checkpoint NOTIFYs a stream's events as one item string, so they travel
    or drop out together; when they do not fit, the text-less and part-less
    forms go instead (readers fetch what is missing).
    """
    if not events:
        return None
    text = ",".join(item(event) for event in events)
    if _size(text) <= MAX_ITEM_BYTES:
        return text
    return ",".join(item(event, small=True) for event in events)


def pack(items: Sequence[str | None]) -> list[int]:
    """Each item's payload number: consecutive, in order, every payload under MAX_PAYLOAD_BYTES.

    An absent item (None) takes no room. Dropping items from a payload keeps it
    under the limit, which is what lets the checkpoint statement leave out fenced rows.
    """
    numbers = []
    number, size = 0, 1  # the opening bracket
    for one in items:
        # Each item brings itself and one more byte: a comma, or the closing bracket.
        grows = 0 if one is None else _size(one) + 1
        if size > 1 and size + grows > MAX_PAYLOAD_BYTES:
            number, size = number + 1, 1
        numbers.append(number)
        size += grows
    return numbers


def payload(items: Iterable[str]) -> str:
    """The payload carrying these items."""
    return "[" + ",".join(items) + "]"


def encode(events: Iterable[Event]) -> list[str]:
    """Pack events into as few payloads as fit under Postgres's limit, in order."""
    items = [item(event) for event in events]
    payloads: dict[int, list[str]] = {}
    for one, number in zip(items, pack(items), strict=True):
        payloads.setdefault(number, []).append(one)
    return [payload(group) for group in payloads.values()]


def decode(text: str) -> list[Event]:
    """The events of one payload."""
    return [_from_wire(one) for one in json.loads(text)]


NOTIFY = "SELECT pg_notify(%s, %s)"


def notify_statements(events: Iterable[Event]) -> list[Statement[None]]:
    """Queue events on the transaction they run in; Postgres delivers them at commit."""
    return [Statement(NOTIFY, (CHANNEL, text), nothing) for text in encode(events)]


def send(conn: Connection[Any], events: Iterable[Event]) -> None:
    """Queue events on the caller's transaction; Postgres delivers them at commit."""
    for notify in notify_statements(events):
        notify.run(conn)
