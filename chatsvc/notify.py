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
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import gevent
import gevent.event
import psycopg
from gevent.queue import Empty, Full, Queue
from psycopg import Connection

from chatsvc import db, jsonio
from chatsvc.background import Background

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


class Resync:
    """Sentinel: events were lost (queue overflow, listener reconnect); re-read the database."""


class Closing:
    """Sentinel: the process is stopping; end cleanly so the client reconnects elsewhere."""


RESYNC = Resync()
CLOSING = Closing()
Item = Event | Resync | Closing


@dataclass(eq=False)
class Subscriber:
    """One follower's bounded queue. A full queue drops events and asks for a resync."""

    hub: Hub
    keys: tuple[UUID, ...]
    queue: Queue = field(repr=False)
    overflowed: bool = False

    def get(self, timeout: float) -> Item | None:
        """The next item, or None after `timeout` seconds of silence."""
        if self.overflowed:
            self.overflowed = False
            self._drain()
            return RESYNC
        try:
            item: Item = self.queue.get(timeout=timeout)
        except Empty:
            return None
        return item

    def pending(self) -> Iterator[Item]:
        """Items already queued, without waiting."""
        while True:
            try:
                yield self.queue.get_nowait()
            except Empty:
                return

    def offer(self, item: Item) -> None:
        """Queue an item without ever blocking the publisher."""
        try:
            self.queue.put_nowait(item)
        except Full:
            self.overflowed = True

    def _drain(self) -> None:
        for _ in self.pending():
            pass

    def close(self) -> None:
        """Stop receiving events."""
        self.hub.unsubscribe(self)


class Hub:
    """This process's router from committed events to subscribers and to stream owners."""

    def __init__(self, queue_size: int = 256) -> None:
        self.queue_size = queue_size
        self._routes: dict[UUID, set[Subscriber]] = {}
        self._handlers: list[Callable[[Event], None]] = []
        self.closing = False

    def subscribe(self, *keys: UUID) -> Subscriber:
        """Receive events of these messages, conversations or projects."""
        sub = Subscriber(self, keys, Queue(self.queue_size))
        if self.closing:
            sub.offer(CLOSING)
        for key in keys:
            self._routes.setdefault(key, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Stop routing to a subscriber (idempotent)."""
        for key in sub.keys:
            subs = self._routes.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._routes[key]

    def on_event(self, handler: Callable[[Event], None]) -> None:
        """Call handler for every event (stream owners use it for cancels and releases)."""
        self._handlers.append(handler)

    @property
    def subscriber_count(self) -> int:
        """Distinct live subscribers."""
        return len({sub for subs in self._routes.values() for sub in subs})

    def publish(self, events: Iterable[Event]) -> None:
        """Deliver committed events; a failing handler never stops delivery to the rest."""
        for event in events:
            for handler in self._handlers:
                try:
                    handler(event)
                except Exception:
                    log.exception("event handler failed on %r", event)
            for key in _route_keys(event):
                for sub in tuple(self._routes.get(key, ())):
                    sub.offer(event)

    def broadcast(self, item: Resync | Closing) -> None:
        """Send a sentinel to every subscriber."""
        if isinstance(item, Closing):
            self.closing = True
        for subs in tuple(self._routes.values()):
            for sub in tuple(subs):
                sub.offer(item)


def _route_keys(event: Event) -> tuple[UUID, ...]:
    match event:
        case Delta() | StatusChanged() | Finished() | MessageCreated():
            return (event.message_id, event.conversation_id)
        case ConversationDeleted():
            return (event.conversation_id,)
        case ProjectEvent():
            return (event.project_id,)
    return ()


LIVENESS_LOCK = "SELECT pg_advisory_lock(%s, %s)"


class Listener(Background):
    """The process's single LISTEN connection, feeding the hub; reconnects by itself."""

    def __init__(
        self,
        url: str,
        hub: Hub,
        *,
        own_pids: Callable[[], set[int]],
        liveness_lock: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self.hub = hub
        self.own_pids = own_pids
        self.liveness_lock = liveness_lock
        self.connected = gevent.event.Event()
        self.connected_at: float | None = None

    def stop(self, timeout: float = 2.0) -> None:
        """Stop listening (at once: the loop may be waiting on the connection)."""
        self._stopped = True
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=timeout)

    def _run(self) -> None:
        backoff = 0.1
        first = True
        while not self._stopped:
            try:
                with db.connect(self.url, autocommit=True, purpose="chatsvc-listen") as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if self.liveness_lock is not None:
                        # Held for as long as this process is alive and connected:
                        # other processes read a free lock as "owner gone".
                        conn.execute(LIVENESS_LOCK, self.liveness_lock)
                    self.connected_at = time.monotonic()
                    self.connected.set()
                    backoff = 0.1
                    if not first:
                        # Anything committed while we were away was not delivered.
                        self.hub.broadcast(RESYNC)
                    first = False
                    self._listen(conn)
            except psycopg.Error as exc:
                self.connected.clear()
                self.connected_at = None
                log.warning("listener connection lost (%s); reconnecting in %.1fs", exc, backoff)
                gevent.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _listen(self, conn: Connection[Any]) -> None:
        while not self._stopped:
            conn.execute("SELECT 1")  # notice a dead connection even when all is quiet
            for notice in conn.notifies(timeout=5.0):
                if notice.pid in self.own_pids():
                    continue  # the committer already published it locally
                try:
                    events = decode(notice.payload)
                except (ValueError, KeyError, IndexError, TypeError):
                    log.warning("ignoring malformed notification %r", notice.payload[:200])
                    continue
                self.hub.publish(events)
