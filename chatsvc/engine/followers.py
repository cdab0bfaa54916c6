"""Following a message or a conversation: catch-up from the database, then live events.

A follower subscribes to the hub *before* it reads the database, so anything
committed after its read reaches it as an event. It keeps, per answer, a Track:
the offsets up to which it has sent text and reasoning, and the tool version up
to which it has sent tool changes. An event that overlaps is trimmed (or, for a
tool change, dropped), one that leaves a gap (or carries no payload, or got
dropped on overflow) makes it read what is missing from the database. That is
what makes the deltas a client receives concatenate to exactly the committed
content, and the reasoning to exactly the reasoning, across any number of
reconnects.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from chatsvc.engine import messages as message_rows
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
from chatsvc.engine.hub import Closing, Resync, Subscriber
from chatsvc.engine.messages import Message, PartsFrom
from chatsvc.engine.positions import Cursor, Position

# Re-exported: the runtime builds a follower's Sources from here.
from chatsvc.engine.sources import RecentRows as RecentRows  # noqa: PLC0414
from chatsvc.engine.sources import Sources as Sources  # noqa: PLC0414
from chatsvc.engine.tracks import Piece, Track, catch_up, check_position, done_data, tool_data
from chatsvc.errors import wrap_exceptions


@dataclass(frozen=True, slots=True)
class Out:
    """One event for the client: SSE `event`/`id`/`data`, or a WebSocket frame."""

    event: str
    data: dict[str, Any]
    id: str | None = None
    # Where the client is in the answer after this event (`id` is its SSE spelling).
    position: Position | None = None


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

    def event_id(self, message_id: UUID, position: Position) -> str:
        """The SSE id of an event at this position."""
        raise NotImplementedError

    def at(self, event: str, data: dict[str, Any], message_id: UUID, position: Position) -> Out:
        """An event that leaves the client at `position` in the answer."""
        return Out(event, data, self.event_id(message_id, position), position)

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
            case Delta() | ReasoningDelta():
                return self.on_text(event)
            case ToolChanged():
                return self.on_tool(event)
            case StatusChanged():
                track = self.tracks.get(event.message_id)
                if track is None or event.epoch <= track.epoch:
                    return []
                if track.done and event.status != "streaming":
                    return []
                # A continued answer streams again from its old end: follow it on.
                track.epoch, track.done = event.epoch, False
                return [status_out(event.message_id, event.status, event.epoch, event.resumed)]
            case Finished():
                return self.on_finished(event)
        return []

    def on_text(self, event: Delta | ReasoningDelta) -> list[Out]:
        """Send the part of a text or reasoning delta the client has not had; read a gap."""
        track = self.tracks.get(event.message_id)
        kind = "delta" if isinstance(event, Delta) else "reasoning"
        if track is None or track.done:
            return []
        sent = track.offset if kind == "delta" else track.reasoning
        if event.end <= sent:
            return []
        track.composite = track.composite or kind == "reasoning"
        if event.text is None or event.start > sent:
            return self.catch_up(track)
        return [self.text(track, kind, event.text[sent - event.start :])]

    def on_tool(self, event: ToolChanged) -> list[Out]:
        """Send the next tool change; drop one already sent; read past a gap."""
        track = self.tracks.get(event.message_id)
        if track is None or track.done or event.version <= track.tools:
            return []
        track.composite = True
        if event.part is None or event.version > track.tools + 1:
            return self.catch_up(track)
        return [self.out(track, Piece("tool", "", event.part, event.version))]

    def on_finished(self, event: Finished) -> list[Out]:
        """End a track, reading from the database whatever the client still lacks."""
        track = self.tracks.get(event.message_id)
        if track is None or track.done:
            return []
        # Finished carries no reasoning or tool totals: an answer with parts ends
        # only once a read shows the client has all of them.
        if track.composite or track.offset != event.content_length or event.usage is None:
            return self.catch_up(track)
        track.done = True
        data = done_data(
            event.message_id, event.status, event.content_length, event.usage, event.error
        )
        return [self.at("done", data, event.message_id, track.position)]

    def text(self, track: Track, event: str, text: str) -> Out:
        """A delta or reasoning event for text at the track's offset of its kind."""
        return self.out(track, Piece(event, text, None, track.tools))

    def out(self, track: Track, piece: Piece) -> Out:
        """The event for one piece of the answer, advancing the track past it."""
        data: dict[str, Any]
        if piece.event == "tool":
            assert piece.part is not None
            data = tool_data(track.message_id, piece.part)
        elif piece.event == "reasoning":
            data = {"message_id": track.message_id, "offset": track.reasoning, "text": piece.text}
            track.reasoning += len(piece.text)
        else:
            data = {"message_id": track.message_id, "offset": track.offset, "text": piece.text}
            track.offset += len(piece.text)
        track.tools = max(track.tools, piece.tools)
        return self.at(piece.event, data, track.message_id, track.position)

    def catch_up(self, track: Track, state: PartsFrom | None = None) -> list[Out]:
        """Everything committed after the track's position, in part order; `done` if it ended."""
        state = state or self.sources.read(track.message_id, track.position)
        if state is None:  # deleted
            track.done = True
            return []
        track.composite = track.composite or state.has_parts
        outs = [self.out(track, piece) for piece in catch_up(state, track.position)]
        # Every tool part changed since the position was just sent.
        track.tools = max(track.tools, state.tool_version)
        track.epoch = max(track.epoch, state.epoch)
        if state.is_terminal:
            track.done = True
            data = done_data(
                track.message_id, state.status, state.content_length, state.usage, state.error
            )
            outs.append(self.at("done", data, track.message_id, track.position))
        return outs


def status_out(message_id: UUID, status: str, epoch: int, resumed: bool) -> Out:
    """The `status` event: an answer changed hands."""
    data = {"message_id": message_id, "status": status, "epoch": epoch, "resumed": resumed}
    return Out("status", data)


def taken_over(message_id: UUID, status: str, epoch: int) -> list[Out]:
    """On (re)connect, a `status` first when the answer changed hands since it started, so a
    client that was away during the takeover learns of it too."""
    if epoch <= message_rows.FIRST_EPOCH:
        return []
    return [status_out(message_id, status, epoch, resumed=True)]


class MessageFollower(Follower):
    """GET /api/messages/{id}/stream: one answer from an offset to `done`."""

    def event_id(self, message_id: UUID, position: Position) -> str:
        return str(position)

    def open(self, message_id: UUID, position: Position) -> tuple[PartsFrom, list[Out]]:
        """Subscribe and read; raises InvalidRequest for a position past what is committed."""
        self.sub = self.hub.subscribe(message_id)
        try:
            state = self.sources.read(message_id, position)
            assert state is not None, "the caller checked the message exists"
            check_position(
                position, state.content_length, state.reasoning_length, state.tool_version
            )
            track = Track.at(message_id, position, state.epoch, state.has_parts)
            self.tracks[message_id] = track
            first = taken_over(message_id, state.status, state.epoch) + self.catch_up(track, state)
        except BaseException:
            self.close()
            raise
        return state, first

    def is_finished(self) -> bool:
        return all(t.done for t in self.tracks.values())


class ConversationFollower(Follower):
    """GET /api/conversations/{id}/stream: the branch the conversation shows, then every
    message and answer as it comes, and the branch again whenever it changes."""

    def __init__(self, sources: Sources) -> None:
        super().__init__(sources)
        self.conversation_id: UUID | None = None
        # The messages the client shows, in order: the current branch as it was sent.
        self.branch: list[UUID] = []

    def event_id(self, message_id: UUID, position: Position) -> str:
        return str(Cursor(message_id, position))

    def open(self, conversation_id: UUID, cursor: Cursor | None) -> list[Out]:
        """Subscribe, then replay what the client has not seen since `cursor`."""
        self.conversation_id = conversation_id
        self.sub = self.hub.subscribe(conversation_id)
        try:
            return self._replay(self._current_branch(), cursor)
        except BaseException:
            self.close()
            raise

    def _current_branch(self) -> list[Message]:
        assert self.conversation_id is not None
        with wrap_exceptions(), self.pool.connection() as conn:
            return message_rows.current_branch(conn, self.conversation_id)

    def _replay(self, rows: list[Message], cursor: Cursor | None) -> list[Out]:
        ids = [row.id for row in rows]
        if cursor is None:
            return [out for row in rows for out in self.announce(row)]
        if cursor.message_id not in ids:
            # The branch changed while the client was away: it gets the branch whole.
            return self._show(rows, [])
        start = ids.index(cursor.message_id)
        for row in rows[:start]:
            self._follow(row)
        row = rows[start]
        check_position(cursor.position, row.content_length, row.reasoning_length, row.tool_version)
        self.branch = ids[: start + 1]
        outs: list[Out] = []
        if row.role == "assistant":
            # An answer read to its end gets its `done` again: the cursor cannot
            # tell whether `done` arrived, and a second one is harmless.
            track = Track.at(row.id, cursor.position, row.epoch, row.has_parts)
            self.tracks[row.id] = track
            outs += taken_over(row.id, row.status, row.epoch) + self.catch_up(track)
        for later in rows[start + 1 :]:
            outs += self.announce(later)
        return outs

    def _follow(self, row: Message) -> Position:
        """A track at the end of what is committed of a message (done unless it streams)."""
        end = Position(row.content_length, row.reasoning_length, row.tool_version, row.has_parts)
        track = Track.at(row.id, end, row.epoch, row.has_parts)
        track.done = not row.is_streaming
        self.tracks[row.id] = track
        return end

    def _message(self, row: Message) -> Out:
        """A `message` event with the message as committed; its track follows it on."""
        return self.at("message", row.to_json(), row.id, self._follow(row))

    def announce(self, row: Message) -> list[Out]:
        """The `message` event of a message that extends the branch the client shows."""
        if row.id in self.branch:
            return []
        self.branch.append(row.id)
        return [self._message(row)]

    def _show(self, rows: list[Message], shown: list[UUID]) -> list[Out]:
        """The `branch` event, then the messages of the branch the client lacks."""
        assert self.conversation_id is not None
        ids = [row.id for row in rows]
        self.branch = ids
        for gone in set(self.tracks) - set(ids):
            del self.tracks[gone]
        data = {"conversation_id": self.conversation_id, "message_ids": ids}
        return [Out("branch", data)] + [self._message(r) for r in rows if r.id not in shown]

    def rebranch(self) -> list[Out]:
        """Read the branch the conversation shows now, and send what changed."""
        rows = self._current_branch()
        ids = [row.id for row in rows]
        if ids[: len(self.branch)] == self.branch:
            # It grew: the new messages follow.
            return [out for row in rows for out in self.announce(row)]
        return self._show(rows, [i for i in self.branch if i in ids])

    def resync(self) -> list[Out]:
        """Events were lost: read the branch again, continue answers that were continued."""
        outs = self.rebranch()
        for row in self._current_branch():
            track = self.tracks.get(row.id)
            if track is not None and track.done and row.is_streaming and row.epoch > track.epoch:
                track.epoch, track.done = row.epoch, False
                outs.append(status_out(row.id, row.status, row.epoch, resumed=True))
        return outs + super().resync()

    def _arrived(self, message_id: UUID) -> list[Out]:
        """A message not on the branch the client shows was created, or has news."""
        row = self.sources.rows.get(message_id)
        if row is None or row.conversation_id != self.conversation_id:
            return []
        if row.id in self.branch:
            return []
        if row.parent_id == (self.branch[-1] if self.branch else None):
            return self.announce(row)
        return self.rebranch()

    def on_event(self, event: Event) -> list[Out]:
        if isinstance(event, ConversationDeleted):
            self.finished = True
            return []
        if isinstance(event, BranchChanged):
            return self.rebranch()
        if isinstance(event, MessageCreated):
            return self._arrived(event.message_id)
        message_id = getattr(event, "message_id", None)
        if message_id is not None and message_id not in self.tracks:
            # Events can overtake the notification of the message itself (the
            # committer publishes locally); announcing it reads everything so far.
            return self._arrived(message_id)
        return super().on_event(event)


ROOM_EVENTS = ("conversation.created", "conversation.deleted", "stream.started", "stream.finished")


class ProjectFollower(Follower):
    """A project room: the four room events, for as long as the user stays a member."""

    def __init__(self, sources: Sources) -> None:
        super().__init__(sources)
        self.user_id = ""

    def event_id(self, message_id: UUID, position: Position) -> str:
        return str(Cursor(message_id, position))

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
