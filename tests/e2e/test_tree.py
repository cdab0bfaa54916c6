"""Conversations as trees, through real gunicorn processes and the fake LLM: the current
branch, regenerate, edit, switch, continue (from another instance, after a crash), the
one-active-answer rule across branches, and a page's stream following branch changes."""

from __future__ import annotations

import json
import uuid
from typing import Any

import gevent
import pytest

from chatsvc.fakellm import parse_directives, script_text
from tests.e2e.conftest import Instance, serving
from tests.support import (
    ApiClient,
    FakeLLMServer,
    SseEvent,
    WsClient,
    follow_message,
    make_user,
    query,
    wait_until,
)

pytestmark = pytest.mark.e2e


def _ids(conversation: dict[str, Any]) -> list[str]:
    return [m["id"] for m in conversation["messages"]]


def _answered(client: ApiClient, conversation_id: str, content: str) -> dict[str, Any]:
    """Send and wait for the answer; the exchange as the server returned it."""
    sent = client.send(conversation_id, content)
    client.wait_terminal(sent["assistant_message"]["id"])
    return sent


def _prompt(answer: dict[str, Any]) -> list[list[str]]:
    """What the fake LLM was sent for an answer asked with `@fake echo=1`."""
    said: list[list[str]] = json.loads(answer["content"])
    return said


def test_a_prompt_is_exactly_its_branch(
    pair: tuple[Instance, Instance], token: str, fake_llm: FakeLLMServer
) -> None:
    a, b = pair
    alice = a.client(token)
    conversation = alice.conversation()["id"]
    q1 = _answered(alice, conversation, "first @fake chunks=3")
    a1 = alice.get(f"/api/messages/{q1['assistant_message']['id']}").json()
    # Another version of the first question, then a question on that branch.
    edit = {"content": "first, again @fake chunks=3 seed=2"}
    edited = alice.post(f"/api/messages/{q1['user_message']['id']}/edit", edit).json()
    a1b = alice.wait_terminal(edited["assistant_message"]["id"])
    asked = _answered(b.client(token), conversation, "which branch? @fake echo=1")
    answer = alice.get(f"/api/messages/{asked['assistant_message']['id']}").json()
    assert _prompt(answer) == [
        ["user", edit["content"]],
        ["assistant", a1b["content"]],
        ["user", "which branch? @fake echo=1"],
    ]
    # A regeneration on the first branch: its prompt is that branch, never the other.
    alice.put(f"/api/conversations/{conversation}/branch", {"message_id": a1["id"]})
    redo = alice.post(f"/api/messages/{a1['id']}/regenerate").json()["assistant_message"]
    alice.wait_terminal(redo["id"])
    asked = _answered(alice, conversation, "and now? @fake echo=1")
    answer = alice.get(f"/api/messages/{asked['assistant_message']['id']}").json()
    redone = alice.get(f"/api/messages/{redo['id']}").json()
    assert _prompt(answer) == [
        ["user", "first @fake chunks=3"],
        ["assistant", redone["content"]],
        ["user", "and now? @fake echo=1"],
    ]
    # The LLM's own record of the request agrees.
    last = [r for r in fake_llm.app.requests if "and now?" in json.dumps(r["messages"])][-1]
    assert [[m["role"], m["content"]] for m in last["messages"]] == _prompt(answer)


def test_regenerate_adds_a_version_and_keeps_the_old_one(
    pair: tuple[Instance, Instance], token: str, shared_db: str, fake_llm: FakeLLMServer
) -> None:
    a, b = pair
    alice = a.client(token)
    conversation = alice.conversation()["id"]
    sent = _answered(alice, conversation, "tell me @fake chunks=5")
    old = alice.get(f"/api/messages/{sent['assistant_message']['id']}").json()

    response = b.client(token).post(
        f"/api/messages/{old['id']}/regenerate", {"model": "openai/fake-2"}
    )
    assert response.status_code == 202, response.text
    body = response.json()
    new = body["assistant_message"]
    assert body["stream_url"] == f"/api/messages/{new['id']}/stream"
    assert new["parent_id"] == old["parent_id"] == sent["user_message"]["id"]
    assert new["sibling_ids"] == [old["id"], new["id"]]
    assert new["status"] == "streaming" and new["model"] == "openai/fake-2"
    shown = alice.get(f"/api/conversations/{conversation}").json()
    assert _ids(shown) == [sent["user_message"]["id"], new["id"]]
    done = alice.wait_terminal(new["id"])
    assert done["status"] == "completed" and done["model"] == "openai/fake-2"
    assert any(r["model"] == "fake-2" for r in fake_llm.app.requests)
    # The old answer is exactly as it was, but for knowing its new sibling.
    again = alice.get(f"/api/messages/{old['id']}").json()
    assert again == {**old, "sibling_ids": [old["id"], new["id"]]}
    assert query(
        shared_db, "SELECT count(*) AS n FROM messages WHERE conversation_id = %s", conversation
    ) == [{"n": 3}]


def test_edit_branches_and_switch_shows_any_branch(
    pair: tuple[Instance, Instance], token: str
) -> None:
    a, b = pair
    alice = a.client(token)
    conversation = alice.conversation()["id"]
    one = _answered(alice, conversation, "one @fake chunks=2")
    two = _answered(alice, conversation, "two @fake chunks=2")
    q1, a1 = one["user_message"]["id"], one["assistant_message"]["id"]
    q2, a2 = two["user_message"]["id"], two["assistant_message"]["id"]
    before = {m: alice.get(f"/api/messages/{m}").json() for m in (q2, a2)}

    edit = {"content": "two, better @fake chunks=2", "client_message_id": "e1"}
    response = b.client(token).post(f"/api/messages/{q2}/edit", edit)
    assert response.status_code == 202, response.text
    edited = response.json()
    q2b, a2b = edited["user_message"]["id"], edited["assistant_message"]["id"]
    assert edited["user_message"]["parent_id"] == a1
    assert edited["user_message"]["sibling_ids"] == [q2, q2b]
    assert edited["assistant_message"]["parent_id"] == q2b
    # The same client_message_id: the same pair, nothing new.
    repeated = alice.post(f"/api/messages/{q2}/edit", edit)
    assert repeated.status_code == 200
    assert [repeated.json()[k]["id"] for k in ("user_message", "assistant_message")] == [q2b, a2b]
    alice.wait_terminal(a2b)
    assert _ids(alice.get(f"/api/conversations/{conversation}").json()) == [q1, a1, q2b, a2b]
    for message, was in before.items():
        assert alice.get(f"/api/messages/{message}").json() == {
            **was,
            "sibling_ids": [q2, q2b] if message == q2 else was["sibling_ids"],
        }

    # Switch to the old version; a new message follows it there.
    shown = alice.put(f"/api/conversations/{conversation}/branch", {"message_id": q2})
    assert shown.status_code == 200 and _ids(shown.json()) == [q1, a1, q2, a2]
    three = _answered(alice, conversation, "three @fake chunks=2")
    assert three["user_message"]["parent_id"] == a2
    path = [q1, a1, q2, a2, three["user_message"]["id"], three["assistant_message"]["id"]]
    assert _ids(alice.get(f"/api/conversations/{conversation}").json()) == path
    # Through a message with several branches below it: the newest one.
    shown = alice.put(f"/api/conversations/{conversation}/branch", {"message_id": q2b})
    assert _ids(shown.json()) == [q1, a1, q2b, a2b]
    shown = alice.put(f"/api/conversations/{conversation}/branch", {"message_id": a1})
    assert _ids(shown.json()) == path  # the branch extended last
    # The WebSocket shows the current branch too.
    ws = WsClient(a.base, {"Authorization": f"Bearer {token}"})
    try:
        ws.send({"type": "subscribe", "conversation_id": conversation})
        frames = [ws.receive() for _ in path]
    finally:
        ws.close()
    assert [f["id"] for f in frames] == path and frames[-1]["sibling_ids"] == [path[-1]]


def test_the_rules_hold_across_branches(pair: tuple[Instance, Instance], token: str) -> None:
    a, b = pair
    alice = a.client(token)
    bob = b.client(make_user(a.db_url, f"bob{uuid.uuid4().hex[:8]}"))
    conversation = alice.conversation()["id"]
    one = _answered(alice, conversation, "one @fake chunks=2")
    q1, a1 = one["user_message"]["id"], one["assistant_message"]["id"]
    edited = alice.post(f"/api/messages/{q1}/edit", {"content": "one, again @fake chunks=2"})
    alice.wait_terminal(edited.json()["assistant_message"]["id"])
    # a1 is now a leaf of another branch, while an answer streams on this one.
    busy = alice.send(conversation, "long @fake chunks=3000 delay=0.01")["assistant_message"]
    try:
        attempts = {
            f"/api/messages/{a1}/regenerate": None,
            f"/api/messages/{q1}/edit": {"content": "x"},
            f"/api/conversations/{conversation}/branch": {"message_id": a1},
        }
        for path, body in attempts.items():
            response = b.client(token).request(
                "PUT" if "branch" in path else "POST", path, json=body
            )
            assert (response.status_code, response.json()["error"]["code"]) == (
                409,
                "stream_active",
            ), path
        # The wrong kind or state is 422 before the conflict.
        wrong = {
            f"/api/messages/{q1}/regenerate": None,
            f"/api/messages/{a1}/edit": {"content": "x"},
            f"/api/messages/{q1}/continue": None,
            f"/api/messages/{a1}/continue": None,  # completed
            f"/api/messages/{busy['id']}/continue": None,  # streaming
        }
        for path, body in wrong.items():
            response = alice.post(path, body)
            assert (response.status_code, response.json()["error"]["code"]) == (
                422,
                "validation_error",
            ), path
        # Another user's messages do not exist for them.
        for path in (f"/api/messages/{a1}/regenerate", f"/api/messages/{a1}/continue"):
            assert bob.post(path).status_code == 404
        assert (
            bob.put(f"/api/conversations/{conversation}/branch", {"message_id": a1}).status_code
            == 404
        )
        streaming = query(
            a.db_url,
            "SELECT count(*) AS n FROM messages WHERE conversation_id = %s "
            "AND status = 'streaming'",
            conversation,
        )
        assert streaming == [{"n": 1}]
    finally:
        alice.post(f"/api/messages/{busy['id']}/cancel")
        alice.wait_terminal(busy["id"])
    # A stopped answer that another message follows cannot be continued.
    stopped = alice.get(f"/api/messages/{busy['id']}").json()
    assert stopped["status"] == "cancelled"
    after = _answered(alice, conversation, "after @fake chunks=2")
    response = alice.post(f"/api/messages/{busy['id']}/continue")
    assert response.status_code == 422, response.text
    assert after["user_message"]["parent_id"] == busy["id"]


@pytest.mark.parametrize("repeat", [0, 11])
def test_continue_reads_on_from_the_old_end_on_another_instance(
    pair: tuple[Instance, Instance], token: str, repeat: int
) -> None:
    a, b = pair
    alice = a.client(token)
    content = f"pause me @fake chunks=150 size=4 delay=0.01 repeat={repeat}"
    answer = alice.send(alice.conversation()["id"], content)["assistant_message"]
    owners: list[str] = []

    def stop_midway(seen: Any) -> None:
        if len(seen.text) >= 120 and not owners:
            owners.append(
                query(a.db_url, "SELECT owner FROM messages WHERE id = %s", answer["id"])[0][
                    "owner"
                ]
            )
            b.client(token).post(f"/api/messages/{answer['id']}/cancel")

    first = follow_message([a.base], token, answer["id"], on_delta=stop_midway)
    assert first.done is not None and first.done["status"] == "cancelled"
    stopped = alice.get(f"/api/messages/{answer['id']}").json()
    assert stopped["content"] == first.text and stopped["epoch"] == 1

    response = b.client(token).post(f"/api/messages/{answer['id']}/continue")
    assert response.status_code == 202, response.text
    continued = response.json()
    assert continued["id"] == answer["id"] and continued["status"] == "streaming"
    assert continued["epoch"] == 2 and continued["content"].startswith(first.text)
    writer = query(a.db_url, "SELECT owner FROM messages WHERE id = %s", answer["id"])[0]["owner"]
    # The reader that saw the stop reads on with its last id, on the first instance.
    rest = follow_message([a.base], token, answer["id"], resume=first)
    assert rest.done is not None and rest.done["status"] == "completed"
    final = alice.get(f"/api/messages/{answer['id']}").json()
    # No gap, no overlap, and the seam trimmed when the model repeated itself.
    assert rest.text == final["content"] == script_text(parse_directives(content))
    assert rest.done["content_length"] == len(final["content"])
    assert final["parts"] == [{"type": "text", "text": final["content"]}]
    # Another process wrote the continuation; each model call is metered once.
    calls = query(
        a.db_url,
        "SELECT epoch, prompt_tokens, completion_tokens, estimated "
        "FROM llm_calls WHERE message_id = %s ORDER BY epoch",
        answer["id"],
    )
    # (the cancelled call reported nothing and is estimated; the continuation reported)
    assert [(c["epoch"], c["estimated"]) for c in calls] == [(1, True), (2, False)]
    assert final["usage"]["prompt_tokens"] == sum(c["prompt_tokens"] for c in calls)
    assert final["usage"]["completion_tokens"] == sum(c["completion_tokens"] for c in calls)
    assert owners[0] and writer and writer != owners[0]


def test_continue_after_a_crash_left_the_answer_interrupted(
    db: str, fake_llm: FakeLLMServer
) -> None:
    policy = {"CHATSVC_ORPHAN_POLICY": "interrupt"}
    first, survivor = Instance(db, fake_llm, env=policy), Instance(db, fake_llm, env=policy)
    with serving(first, survivor):
        token = make_user(db, "carol")
        content = "crash me @fake chunks=200 size=4 delay=0.01"
        answer = first.client(token).ask(content)
        wait_until(
            "some text",
            lambda: (
                query(db, "SELECT content_length FROM messages WHERE id = %s", answer)[0][
                    "content_length"
                ]
                > 100
            ),
        )
        first.kill()
        carol = survivor.client(token)
        wait_until(
            "the takeover",
            lambda: carol.get(f"/api/messages/{answer}").json()["status"] == "interrupted",
        )
        response = carol.post(f"/api/messages/{answer}/continue")
        assert response.status_code == 202, response.text
        read = follow_message([survivor.base], token, answer)
        final = carol.get(f"/api/messages/{answer}").json()
        assert read.done is not None and read.done["status"] == "completed"
        assert read.text == final["content"] == script_text(parse_directives(content))
        assert final["epoch"] == 3  # created 1, interrupted 2, continued 3


def test_an_open_conversation_stream_follows_branch_changes(
    pair: tuple[Instance, Instance], token: str
) -> None:
    a, b = pair
    alice, elsewhere = a.client(token), b.client(token)
    conversation = alice.conversation()["id"]
    sent = _answered(alice, conversation, "hello @fake chunks=3")
    q, old = sent["user_message"]["id"], sent["assistant_message"]["id"]
    events: list[SseEvent] = []

    def follow() -> None:
        for event in alice.sse(f"/api/conversations/{conversation}/stream", timeout=60):
            events.append(event)

    page = gevent.spawn(follow)
    try:
        wait_until("the replay", lambda: [e.event for e in events] == ["message", "message"])
        # Another tab regenerates: this stream shows the new branch and its answer.
        new = elsewhere.post(f"/api/messages/{old}/regenerate").json()["assistant_message"]
        wait_until(
            "the new answer",
            lambda: any(e.event == "done" and e.json()["message_id"] == new["id"] for e in events),
        )
        after_replay = events[2:]
        names = [e.event for e in after_replay]
        assert names[0] == "branch" and after_replay[0].json()["message_ids"] == [q, new["id"]]
        assert names[1] == "message" and after_replay[1].json()["id"] == new["id"]
        text = "".join(e.json()["text"] for e in after_replay if e.event == "delta")
        assert text == elsewhere.get(f"/api/messages/{new['id']}").json()["content"]
        # A switch back: the branch, then the message this stream no longer showed.
        mark = len(events)
        elsewhere.put(f"/api/conversations/{conversation}/branch", {"message_id": old})
        wait_until("the switch", lambda: len(events) >= mark + 2)
        assert [e.event for e in events[mark:]] == ["branch", "message"]
        assert events[mark].json()["message_ids"] == [q, old]
        # Stop and Continue elsewhere: the answer streams on here from its old end.
        long = elsewhere.send(conversation, "long @fake chunks=200 delay=0.01")
        answer = long["assistant_message"]["id"]
        wait_until(
            "some text",
            lambda: any(e.event == "delta" and e.json()["message_id"] == answer for e in events),
        )
        elsewhere.post(f"/api/messages/{answer}/cancel")
        elsewhere.wait_terminal(answer)
        elsewhere.post(f"/api/messages/{answer}/continue")
        wait_until(
            "the continuation",
            lambda: (
                [
                    e.json()["status"]
                    for e in events
                    if e.event == "done" and e.json()["message_id"] == answer
                ]
                == ["cancelled", "completed"]
            ),
        )
        mine = [e for e in events if e.json().get("message_id") == answer]
        status = [e.json() for e in mine if e.event == "status"]
        assert status == [
            {"message_id": answer, "status": "streaming", "epoch": 2, "resumed": True}
        ]
        offsets = [e.json() for e in mine if e.event == "delta"]
        read = ""
        for delta in offsets:
            assert delta["offset"] == len(read)
            read += delta["text"]
        assert read == elsewhere.get(f"/api/messages/{answer}").json()["content"]
    finally:
        page.kill()
