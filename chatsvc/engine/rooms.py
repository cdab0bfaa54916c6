"""A user's room (GET /api/events): the room events of every conversation the user can see.

Events of a private conversation travel on its owner's key (a `UserEvent`), those
of a project conversation on the project's key (a `ProjectEvent`), so a user's
room follows the user's own key and the key of each project they belong to.
Membership decides what the room may carry: when it changes, or when events may
have been lost, the stream ends, and the client reconnects and reads the list
again (what a page does on every (re)connect anyway).
"""

from __future__ import annotations

from uuid import UUID

from chatsvc.engine import projects
from chatsvc.engine.events import Event, ProjectEvent, UserEvent
from chatsvc.engine.followers import ROOM_EVENTS, Follower, Out, Sources
from chatsvc.engine.positions import Position
from chatsvc.errors import wrap_exceptions

# On the user's own key: the user joined a project, whose room the stream does not follow yet.
JOINED = "project.joined"


class UserFollower(Follower):
    """The room events of the user's private conversations and of their projects' ones."""

    def __init__(self, sources: Sources) -> None:
        super().__init__(sources)
        self.user_id = ""

    def event_id(self, message_id: UUID, position: Position) -> str:
        raise NotImplementedError("room events carry no position")

    def open(self, user_id: UUID) -> list[Out]:
        """Subscribe to the user's key and their projects' keys."""
        self.user_id = str(user_id)
        # Listening on the user's key before reading the memberships catches a join
        # committed between the read and the subscription below.
        early = self.hub.subscribe(user_id)
        try:
            with wrap_exceptions(), self.pool.connection() as conn:
                project_ids = [p.id for p in projects.list_projects(conn, user_id)]
            self.sub = self.hub.subscribe(user_id, *project_ids)
            if any(isinstance(e, UserEvent) and e.name == JOINED for e in early.pending()):
                self.finished = True
        finally:
            early.close()
        return []

    def resync(self) -> list[Out]:
        # Room events are not positions to catch up from: the client reads the list again.
        self.finished = True
        return []

    def on_event(self, event: Event) -> list[Out]:
        if not isinstance(event, ProjectEvent | UserEvent):
            return []
        if event.name == JOINED or (
            event.name == "member.removed" and event.data.get("user_id") == self.user_id
        ):
            self.finished = True
            return []
        if event.name in ROOM_EVENTS:
            return [Out(event.name, event.data)]
        return []
