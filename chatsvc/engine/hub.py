"""This process's router from committed events to its subscribers and stream owners.

Subscribers have bounded queues: a slow one overflows and is told to resync
from the database, so it can never stall the listener or the other subscribers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from uuid import UUID

from gevent.queue import Empty, Full, Queue

from chatsvc.engine.events import (
    BranchChanged,
    ConversationDeleted,
    Delta,
    Event,
    Finished,
    MessageCreated,
    ProjectEvent,
    ReasoningDelta,
    StatusChanged,
    ToolChanged,
    UserEvent,
)

log = logging.getLogger(__name__)


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
        case (
            Delta()
            | ReasoningDelta()
            | ToolChanged()
            | StatusChanged()
            | Finished()
            | MessageCreated()
        ):
            return (event.message_id, event.conversation_id)
        case ConversationDeleted() | BranchChanged():
            return (event.conversation_id,)
        case ProjectEvent():
            return (event.project_id,)
        case UserEvent():
            return (event.user_id,)
    return ()
