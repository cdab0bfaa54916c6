"""This process's router from committed events to its subscribers and stream owners.

Subscribers have bounded queues: a slow one overflows and is told to resync
from the database, so it can never stall the listener or the other subscribers.
Each queued event carries the moment this process learnt of its commit (the
checkpointer publishes right after its commit returns, the listener as soon as
it reads the notification), from which the web layer observes its delivery lag.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from uuid import UUID

from gevent.queue import Empty, Full, Queue

from chatsvc import metrics
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
    queue: Queue = field(repr=False)  # of (item, when this process learnt of its commit)
    overflowed: bool = False
    # When this process learnt of the commit of the event `get` returned last
    # (None: that was no event, or there was none).
    received_at: float | None = None
    subscribed: bool = True

    def get(self, timeout: float) -> Item | None:
        """The next item, or None after `timeout` seconds of silence."""
        self.received_at = None
        if self.overflowed:
            self.overflowed = False
            self._drain()
            return RESYNC
        try:
            item, self.received_at = self.queue.get(timeout=timeout)
        except Empty:
            return None
        return item  # type: ignore[no-any-return]

    def pending(self) -> Iterator[Item]:
        """Items already queued, without waiting."""
        while True:
            try:
                yield self.queue.get_nowait()[0]
            except Empty:
                return

    def offer(self, item: Item, received_at: float | None = None) -> None:
        """Queue an item without ever blocking the publisher."""
        try:
            self.queue.put_nowait((item, received_at))
        except Full:
            if not self.overflowed:
                metrics.SUBSCRIBER_OVERFLOWS.inc()
            self.overflowed = True

    def delivered(self, transport: str) -> None:
        """What `get` returned last was written to the client's socket: its delivery lag."""
        if self.received_at is not None:
            metrics.DELIVERY[transport].observe(time.monotonic() - self.received_at)

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
        metrics.SUBSCRIBERS.inc()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Stop routing to a subscriber (idempotent)."""
        if sub.subscribed:
            sub.subscribed = False
            metrics.SUBSCRIBERS.dec()
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
        now = time.monotonic()
        for event in events:
            for handler in self._handlers:
                try:
                    handler(event)
                except Exception:
                    log.exception("event handler failed on %r", event)
            for key in _route_keys(event):
                for sub in tuple(self._routes.get(key, ())):
                    sub.offer(event, now)

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
    return ()
