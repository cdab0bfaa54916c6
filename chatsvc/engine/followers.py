"""Following a message or a conversation: catch-up from the database, then live events.

A follower subscribes to the hub *before* it reads the database, so anything
committed after its read reaches it as an event. It keeps, per answer, the offset
up to which it has sent text; an event that overlaps is trimmed, one that leaves
a gap (or carries no text, or got dropped on overflow) makes it read the missing
range from the database. That is what makes the deltas a client receives
concatenate to exactly the committed content, across any number of reconnects.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import gevent.event
from psycopg_pool import ConnectionPool

from chatsvc.engine import messages as message_rows
from chatsvc.engine.events import (
    ConversationDeleted,
    Delta,
    Event,
    Finished,
    MessageCreated,
    ProjectEvent,
    StatusChanged,
)
from chatsvc.engine.hub import Closing, Hub, Resync, Subscriber
from chatsvc.engine.messages import Message, TextFrom
from chatsvc.engine.positions import Cursor
from chatsvc.errors import InvalidRequest, wrap_exceptions


@dataclass(frozen=True, slots=True)
class Out:
    """One event for the client: SSE `event`/`id`/`data`, or a WebSocket frame."""

    event: str
    data: dict[str, Any]
    id: str | None = None


@dataclass
class Track:
    """How far a client has been sent one answer."""

    message_id: UUID
    offset: int
    epoch: int
    done: bool = False


def done_data(
    message_id: UUID, status: str, length: int, usage: Any, error: str | None
) -> dict[str, Any]:
    """The `done` event's data (SPEC section 3)."""
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


class RecentRows:
    """Message rows read to announce them, shared for a moment by a process's followers.

    When an answer starts, every follower of its conversation in the process must
    announce it; one read serves them all. A row read after the event that made a
    follower want it is as good as its own read: the follower was subscribed when
    that event was published, so every later delta reaches it, and any it missed
    before subscribing is a gap it fills from the database anyway.
    """

    def __init__(self, pool: ConnectionPool, ttl_s: float = 2.0) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        self._rows: dict[UUID, tuple[float, gevent.event.AsyncResult]] = {}

    def get(self, message_id: UUID) -> Message | None:
        """The message, read at most once per `ttl_s` however many followers ask."""
        now = time.monotonic()
        hit = self._rows.get(message_id)
        if hit is not None and now - hit[0] < self.ttl_s:
            row: Message | None = hit[1].get()
            return row
        if len(self._rows) > 1000:
            self._rows = {k: v for k, v in self._rows.items() if now - v[0] < self.ttl_s}
        result = gevent.event.AsyncResult()
        self._rows[message_id] = (now, result)
        try:
            with wrap_exceptions(), self.pool.connection() as conn:
                row = message_rows.get_any(conn, message_id)
        except BaseException as exc:
            del self._rows[message_id]
            result.set_exception(exc)
            raise
        result.set(row)
        return row


@dataclass(frozen=True)
class Sources:
    """What followers read from: the pool, the hub, shared rows; and the heartbeat."""

    pool: ConnectionPool
    hub: Hub
    heartbeat_s: float
    rows: RecentRows

    def read(self, message_id: UUID, offset: int) -> TextFrom | None:
        """The message's committed text after offset, from the database."""
        with wrap_exceptions(), self.pool.connection() as conn:
            return message_rows.text_from(conn, message_id, offset)


class Follower:
    """Shared machinery: tracks, catch-up reads, and turning hub events into client events."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources
        self.pool = sources.pool
        self.hub = sources.hub
        self.heartbeat_s = sources.heartbeat_s
        self.tracks: dict[UUID, Track] = {}
        self.finished = False
        self.sub: Subscriber | None = None

    def close(self) -> None:
        """Unsubscribe (idempotent)."""
        if self.sub is not None:
            self.sub.close()
            self.sub = None

    def event_id(self, message_id: UUID, offset: int) -> str:
        """The SSE id of an event at this position."""
        raise NotImplementedError

    def events(self, first: list[Out]) -> Iterator[Out | None]:
        """The catch-up events, then live events; None when a heartbeat is due."""
        assert self.sub is not None
        yield from first
        quiet_since = time.monotonic()
        while not self.is_finished():
            wait = self.heartbeat_s - (time.monotonic() - quiet_since)
            item = self.sub.get(max(wait, 0.0))
            if item is None:
                outs: list[Out | None] = [None]
            elif isinstance(item, Closing):
                return
            elif isinstance(item, Resync):
                outs = list(self.resync())
            else:
                outs = list(self.on_event(item))
            if outs:
                quiet_since = time.monotonic()
                yield from outs

    def is_finished(self) -> bool:
        """Whether the stream has nothing more to send."""
        return self.finished

    def resync(self) -> list[Out]:
        """Events were lost: bring every open track up to date from the database."""
        outs: list[Out] = []
        for track in list(self.tracks.values()):
            if not track.done:
                outs += self.catch_up(track)
        return outs

    def on_event(self, event: Event) -> list[Out]:
        """Client events for one hub event."""
        match event:
            case Delta():
                return self.on_delta(event)
            case StatusChanged():
                track = self.tracks.get(event.message_id)
                if track is None or track.done or event.epoch <= track.epoch:
                    return []
                track.epoch = event.epoch
                data = {
                    "message_id": event.message_id,
                    "status": event.status,
                    "epoch": event.epoch,
                    "resumed": event.resumed,
                }
                return [Out("status", data)]
            case Finished():
                return self.on_finished(event)
        return []

    def on_delta(self, event: Delta) -> list[Out]:
        """Send the part of a delta the client has not had; read a gap from the database."""
        track = self.tracks.get(event.message_id)
        if track is None or track.done or event.end <= track.offset:
            return []
        if event.text is None or event.start > track.offset:
            return self.catch_up(track)
        text = event.text[track.offset - event.start :]
        return [self.delta(track, text)]

    def on_finished(self, event: Finished) -> list[Out]:
        """End a track, reading from the database whatever text the client still lacks."""
        track = self.tracks.get(event.message_id)
        if track is None or track.done:
            return []
        if track.offset != event.content_length or event.usage is None:
            return self.catch_up(track)
        track.done = True
        data = done_data(
            event.message_id, event.status, event.content_length, event.usage, event.error
        )
        return [Out("done", data, self.event_id(event.message_id, event.content_length))]

    def delta(self, track: Track, text: str) -> Out:
        """A delta event for text starting at the track's offset, advancing it."""
        start = track.offset
        track.offset += len(text)
        data = {"message_id": track.message_id, "offset": start, "text": text}
        return Out("delta", data, self.event_id(track.message_id, track.offset))

    def catch_up(self, track: Track, state: TextFrom | None = None) -> list[Out]:
        """Everything committed after the track's offset as one delta, and `done` if it ended."""
        state = state or self.sources.read(track.message_id, track.offset)
        if state is None:  # deleted
            track.done = True
            return []
        outs = [self.delta(track, state.text)] if state.text else []
        track.epoch = max(track.epoch, state.epoch)
        if state.is_terminal:
            track.done = True
            data = done_data(
                track.message_id, state.status, state.content_length, state.usage, state.error
            )
            outs.append(Out("done", data, self.event_id(track.message_id, state.content_length)))
        return outs


class MessageFollower(Follower):
    """GET /api/messages/{id}/stream: one answer from an offset to `done`."""

    def event_id(self, message_id: UUID, offset: int) -> str:
        return str(offset)

    def open(self, message_id: UUID, offset: int) -> tuple[TextFrom, list[Out]]:
        """Subscribe and read; raises InvalidRequest for an offset past the committed text."""
        self.sub = self.hub.subscribe(message_id)
        try:
            state = self.sources.read(message_id, offset)
            assert state is not None, "the caller checked the message exists"
            if offset > state.content_length:
                raise InvalidRequest(
                    f"Offset {offset} is beyond the committed content "
                    f"({state.content_length} characters)."
                )
            track = Track(message_id, offset, state.epoch)
            self.tracks[message_id] = track
            first = self.catch_up(track, state)
        except BaseException:
            self.close()
            raise
        return state, first

    def is_finished(self) -> bool:
        return all(t.done for t in self.tracks.values())


class ConversationFollower(Follower):
    """GET /api/conversations/{id}/stream: every message, then every answer as it grows."""

    def __init__(self, sources: Sources) -> None:
        super().__init__(sources)
        self.conversation_id: UUID | None = None
        self.announced: set[UUID] = set()

    def event_id(self, message_id: UUID, offset: int) -> str:
        return f"{message_id}:{offset}"

    def open(self, conversation_id: UUID, cursor: Cursor | None) -> list[Out]:
        """Subscribe, then replay what the client has not seen since `cursor`."""
        self.conversation_id = conversation_id
        self.sub = self.hub.subscribe(conversation_id)
        try:
            with wrap_exceptions(), self.pool.connection() as conn:
                rows = message_rows.in_conversation(conn, conversation_id)
            return self._replay(rows, cursor)
        except BaseException:
            self.close()
            raise

    def _replay(self, rows: list[Message], cursor: Cursor | None) -> list[Out]:
        outs: list[Out] = []
        start = 0
        ids = [row.id for row in rows]
        if cursor is not None and cursor.message_id in ids:
            start = ids.index(cursor.message_id)
            row = rows[start]
            self.announced.add(row.id)
            start += 1
            if cursor.offset > row.content_length:
                raise InvalidRequest(
                    f"Offset {cursor.offset} is beyond the committed content of {row.id}."
                )
            if row.role == "assistant":
                # An answer read to its end gets its `done` again: the cursor cannot
                # tell whether `done` arrived, and a second one is harmless.
                track = Track(row.id, cursor.offset, row.epoch)
                self.tracks[row.id] = track
                outs += self.catch_up(track)
        for row in rows[start:]:
            outs += self.announce(row)
        return outs

    def announce(self, row: Message) -> list[Out]:
        """A `message` event with the message as committed; follow it if it streams."""
        if row.id in self.announced:
            return []
        self.announced.add(row.id)
        if row.is_streaming:
            self.tracks[row.id] = Track(row.id, row.content_length, row.epoch)
        return [Out("message", row.to_json(), self.event_id(row.id, row.content_length))]

    def _fetch_and_announce(self, message_id: UUID) -> list[Out]:
        row = self.sources.rows.get(message_id)
        if row is None or row.conversation_id != self.conversation_id:
            return []
        return self.announce(row)

    def on_event(self, event: Event) -> list[Out]:
        if isinstance(event, ConversationDeleted):
            self.finished = True
            return []
        if isinstance(event, MessageCreated):
            return self._fetch_and_announce(event.message_id)
        message_id = getattr(event, "message_id", None)
        if message_id is not None and message_id not in self.announced:
            # Events can overtake the notification of the message itself (the
            # committer publishes locally); announcing it reads everything so far.
            return self._fetch_and_announce(message_id)
        return super().on_event(event)


ROOM_EVENTS = ("conversation.created", "conversation.deleted", "stream.started", "stream.finished")


class ProjectFollower(Follower):
    """A project room: the SPEC's four events, for as long as the user stays a member."""

    def __init__(self, sources: Sources) -> None:
        super().__init__(sources)
        self.user_id = ""

    def event_id(self, message_id: UUID, offset: int) -> str:
        return f"{message_id}:{offset}"

    def open(self, project_id: UUID, user_id: UUID) -> list[Out]:
        """Subscribe to the room (the caller checked membership)."""
        self.user_id = str(user_id)
        self.sub = self.hub.subscribe(project_id)
        return []

    def on_event(self, event: Event) -> list[Out]:
        if not isinstance(event, ProjectEvent):
            return []
        if event.name == "member.removed" and event.data.get("user_id") == self.user_id:
            self.finished = True
            return []
        if event.name in ROOM_EVENTS:
            return [Out(event.name, event.data)]
        return []
