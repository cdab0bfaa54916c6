"""A user's room (GET /api/events), renaming, and the titles of untitled conversations."""

from __future__ import annotations

from typing import Any

import gevent
import pytest

from tests.support import ApiClient, AppServer, SseEvent, make_user, wait_until


class Room:
    """The caller's room, read in a greenlet: its events as (name, data), in order."""

    def __init__(self, client: ApiClient) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.subscribed = False
        self.reader = gevent.spawn(self._read, client)
        # The server subscribes before it answers, so the first block (retry:) means
        # everything committed from now on reaches this room.
        wait_until("the room to open", lambda: self.subscribed, timeout=10)

    def _read(self, client: ApiClient) -> None:
        for event in client.sse("/api/events", control=True):
            self._take(event)

    def _take(self, event: SseEvent) -> None:
        self.subscribed = True
        if event.event:
            self.events.append((event.event, event.json()))

    def wait_for(self, name: str, **match: Any) -> dict[str, Any]:
        """The first event `name` whose data has these fields, once it arrives."""

        def found() -> dict[str, Any] | None:
            for event, data in self.events:
                if event == name and all(data.get(k) == v for k, v in match.items()):
                    return data
            return None

        wait_until(f"{name} {match}", lambda: found() is not None, timeout=20)
        result = found()
        assert result is not None
        return result

    def close(self) -> None:
        """Stop reading."""
        self.reader.kill()


@pytest.fixture
def room(alice: ApiClient) -> Any:
    opened = Room(alice)
    yield opened
    opened.close()


def test_a_private_conversation_s_life_in_its_owner_s_room(
    alice: ApiClient, bob: ApiClient, room: Room
) -> None:
    conversation = alice.conversation()
    cid = conversation["id"]
    created = room.wait_for("conversation.created", conversation_id=cid)
    assert created["project_id"] is None and created["title"] == ""
    answer = alice.send(cid, "  How do\nI *bake* bread at home?  ")["assistant_message"]
    updated = room.wait_for("conversation.updated", conversation_id=cid)
    assert updated["title"] == "How do I *bake* bread at home?"
    room.wait_for("stream.started", conversation_id=cid, message_id=answer["id"])
    finished = alice.wait_terminal(answer["id"])
    done = room.wait_for("stream.finished", message_id=answer["id"])
    assert done["status"] == "completed" and done["content_length"] == finished["content_length"]
    # The title comes from the first message only.
    alice.wait_terminal(alice.send(cid, "a second question")["assistant_message"]["id"])
    assert alice.get(f"/api/conversations/{cid}").json()["title"] == updated["title"]
    renamed = alice.request("PATCH", f"/api/conversations/{cid}", json={"title": "Bread"})
    assert renamed.status_code == 200 and renamed.json()["title"] == "Bread"
    assert renamed.json()["id"] == cid and renamed.json()["is_streaming"] is False
    room.wait_for("conversation.updated", conversation_id=cid, title="Bread")
    others = bob.conversation(title="bob's own")
    bob.send(others["id"], "not for alice")
    assert alice.delete(f"/api/conversations/{cid}").status_code == 204
    room.wait_for("conversation.deleted", conversation_id=cid)
    assert all(data["conversation_id"] != others["id"] for _, data in room.events)
    names = [name for name, data in room.events if data["conversation_id"] == cid]
    assert names == [
        "conversation.created",
        "conversation.updated",
        "stream.started",
        "stream.finished",
        "stream.started",
        "stream.finished",
        "conversation.updated",
        "conversation.deleted",
    ]


def test_project_conversations_reach_every_member_s_room_and_a_join_reopens_it(
    app_server: AppServer, alice: ApiClient, bob: ApiClient, room: Room
) -> None:
    project = bob.post("/api/projects", {"name": "Team"}).json()
    bob.post(f"/api/projects/{project['id']}/members", {"user": "alice"})
    # Joining ends the room's stream (its keys are read when it opens): the client reconnects.
    room.reader.join(timeout=10)
    assert room.reader.ready()
    reopened = Room(alice)
    try:
        shared = bob.conversation(project_id=project["id"], title="Plans")
        created = reopened.wait_for("conversation.created", conversation_id=shared["id"])
        assert created["project_id"] == project["id"] and created["title"] == "Plans"
        answer = bob.send(shared["id"], "hello team")["assistant_message"]
        reopened.wait_for("stream.started", message_id=answer["id"], user_id=bob_id(bob))
        reopened.wait_for("stream.finished", message_id=answer["id"])
        # Titled conversations keep their title after the first message.
        assert bob.get(f"/api/conversations/{shared['id']}").json()["title"] == "Plans"
        bob.delete(f"/api/projects/{project['id']}/members/alice")
        reopened.reader.join(timeout=10)
        assert reopened.reader.ready(), "a removed member's room ends"
    finally:
        reopened.close()
    carol = ApiClient(app_server.base, make_user(app_server.db_url, "carol"))
    opened = carol.get("/api/events", stream=True)
    assert opened.status_code == 200
    assert opened.headers["Content-Type"].startswith("text/event-stream")
    opened.close()
    assert ApiClient(app_server.base, None).get("/api/events").status_code == 401


def bob_id(bob: ApiClient) -> str:
    found: str = bob.get("/api/me").json()["id"]
    return found


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"title": ""}, 422, "validation_error"),
        ({"title": "x" * 201}, 422, "validation_error"),
        ({"title": 3}, 422, "validation_error"),
        ({}, 422, "validation_error"),
        ({"title": "ok", "extra": 1}, 422, "validation_error"),
    ],
)
def test_a_bad_rename_changes_nothing(
    alice: ApiClient, body: dict[str, Any], status: int, code: str
) -> None:
    cid = alice.conversation(title="Kept")["id"]
    response = alice.request("PATCH", f"/api/conversations/{cid}", json=body)
    assert response.status_code == status and response.json()["error"]["code"] == code
    assert alice.get(f"/api/conversations/{cid}").json()["title"] == "Kept"


def test_only_those_who_see_a_conversation_rename_it(alice: ApiClient, bob: ApiClient) -> None:
    cid = alice.conversation(title="Mine")["id"]
    response = bob.request("PATCH", f"/api/conversations/{cid}", json={"title": "Theirs"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert alice.get(f"/api/conversations/{cid}").json()["title"] == "Mine"


def test_long_first_messages_give_short_titles(alice: ApiClient) -> None:
    cid = alice.conversation()["id"]
    words = "please summarise the following rather long paragraph about sourdough " * 5
    alice.wait_terminal(alice.send(cid, "# " + words)["assistant_message"]["id"])
    title = alice.get(f"/api/conversations/{cid}").json()["title"]
    assert title.startswith("please summarise the following") and title.endswith("…")
    assert len(title) <= 60 and not title[:-1].endswith(" ")
