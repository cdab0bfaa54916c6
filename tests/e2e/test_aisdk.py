"""The Vercel AI SDK's real chat client against real gunicorn processes.

`tests/aisdk/harness.mjs` (Node, with the `ai` and `@ai-sdk/react` versions of
tests/aisdk/package-lock.json, installed by scripts/test) sends with
`DefaultChatTransport` and reads with `readUIMessageStream`, or runs a
`new Chat(...)` from @ai-sdk/react as a (reloaded) page does; every message it
rebuilds is compared with the database.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Instance, serving
from tests.faketools import FakeToolServer
from tests.integration.test_chat import chat_body, read_chunks, rebuild
from tests.support import ApiClient, FakeLLMServer, make_user, query, read_sse, wait_until

pytestmark = pytest.mark.e2e

HARNESS = Path(__file__).resolve().parents[1] / "aisdk"


def harness(**command: Any) -> Any:
    """Run one harness command; its JSON result."""
    assert (HARNESS / "node_modules" / "ai").is_dir(), "run scripts/test (npm ci in tests/aisdk)"
    done = subprocess.run(
        ["node", str(HARNESS / "harness.mjs"), json.dumps(command)],
        capture_output=True,
        timeout=90,
        check=False,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def user_message(text: str, message_id: str = "u1") -> dict[str, Any]:
    """A user UIMessage as useChat keeps it."""
    return {"id": message_id, "role": "user", "parts": [{"type": "text", "text": text}]}


def answer_row(db: str, message_id: str) -> dict[str, Any]:
    """The stored answer."""
    (row,) = query(
        db,
        "SELECT id::text, status, content, content_length, usage, error, "
        "message_parts(m) AS parts, epoch FROM messages m WHERE id = %s",
        message_id,
    )
    return row


def ui_parts(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The stored parts as the SDK's UIMessage parts should show them (step-start aside)."""
    shown: list[dict[str, Any]] = []
    for part in row["parts"]:
        if part["type"] == "tool":
            tool = {"type": f"tool-{part['name']}", "toolCallId": part["tool_call_id"]}
            tool |= {"state": part["state"], "input": part["input"]}
            if "output" in part:
                tool["output"] = part["output"]
            if "error" in part:
                tool["errorText"] = part["error"]
            shown.append(tool)
        else:
            shown.append({"type": part["type"], "text": part["text"]})
    return shown


def seen_parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A UIMessage's parts, without step-start, reduced to what ui_parts shows."""
    shown: list[dict[str, Any]] = []
    for part in message["parts"]:
        if part["type"] == "step-start":
            continue
        keys = ("type", "text") if part["type"] in ("text", "reasoning") else ()
        keys = keys or ("type", "toolCallId", "state", "input", "output", "errorText")
        shown.append({k: part[k] for k in keys if part.get(k) is not None})
    return shown


def metadata(row: dict[str, Any]) -> dict[str, Any]:
    """The message metadata chatsvc sends for a stored answer."""
    usage = {k: row["usage"][k] for k in ("prompt_tokens", "completion_tokens")}
    if row["usage"].get("estimated"):
        usage["estimated"] = True
    return {"status": row["status"], "usage": usage, "content_length": row["content_length"]}


@pytest.fixture(scope="module")
def module_tools() -> Iterator[FakeToolServer]:
    server = FakeToolServer(slow_s=30)
    yield server
    server.stop()


def tools_env(tmp: Path, tools: FakeToolServer) -> dict[str, str]:
    """CHATSVC_TOOLS_FILE with the fake tool server's `add` and `broken`."""
    path = tmp / "tools.toml"
    path.write_text(
        f'[[tools]]\nname = "add"\nurl = "{tools.url("ok", "add")}"\nidempotent = false\n\n'
        f'[[tools]]\nname = "broken"\nurl = "{tools.url("fail", "broken")}"\nidempotent = false\n'
    )
    return {"CHATSVC_TOOLS_FILE": str(path)}


@pytest.fixture(scope="module")
def two(
    shared_db: str,
    fake_llm: FakeLLMServer,
    module_tools: FakeToolServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Instance, Instance]]:
    """Two instances with tools, sharing one database."""
    env = tools_env(tmp_path_factory.mktemp("tools"), module_tools)
    with serving(
        Instance(shared_db, fake_llm, env=env), Instance(shared_db, fake_llm, env=env)
    ) as (
        a,
        b,
    ):
        yield a, b


def test_use_chat_sends_and_its_message_is_the_stored_answer(
    two: tuple[Instance, Instance], token: str, shared_db: str
) -> None:
    a, _ = two
    text = '@fake reasoning=3 calls=add:{"n":1};broken:{"n":2} chunks=12 size=3'
    result = harness(
        do="chat", base=a.base, token=token, chatId="first-chat", actions=[{"send": text}]
    )
    (state,) = result["states"]
    assert state["status"] == "ready" and state["error"] is None
    user, answer = state["messages"]
    assert user["role"] == "user" and answer["role"] == "assistant"
    row = answer_row(shared_db, answer["id"])
    assert row["status"] == "completed"
    assert seen_parts(answer) == ui_parts(row)
    assert [p["type"] for p in answer["parts"]].count("step-start") == 2
    assert answer["metadata"] == metadata(row)
    assert state["finished"] == {
        "messageId": answer["id"],
        "finishReason": "stop",
        "isError": False,
    }
    # useChat sends the whole history each time; chatsvc takes only the new message.
    more = harness(
        do="chat",
        base=a.base,
        token=token,
        chatId="first-chat",
        messages=state["messages"],
        actions=[{"send": "@fake chunks=5"}],
    )["states"][0]
    assert [m["role"] for m in more["messages"]] == ["user", "assistant", "user", "assistant"]
    answers = [m["id"] for m in more["messages"][1::2]]
    sql = "SELECT DISTINCT conversation_id FROM messages WHERE id = ANY(%s::uuid[])"
    (conversation,) = query(shared_db, sql, answers)
    sql = "SELECT 1 FROM messages WHERE conversation_id = %s"
    assert len(query(shared_db, sql, conversation["conversation_id"])) == 4


def test_a_dropped_connection_resumes_on_another_instance(
    two: tuple[Instance, Instance], token: str, shared_db: str
) -> None:
    a, b = two
    text = '@fake reasoning=4 calls=add:{"n":3} chunks=80 size=3 delay=0.02'
    result = harness(
        do="send",
        base=a.base,
        resumeBase=b.base,
        token=token,
        chatId="dropped",
        messages=[user_message(text)],
        dropAfter=5,
    )
    first, resumed = result["first"], result["resumed"]
    assert first["chunks"][0]["type"] == "start"
    assert first["chunks"][-1]["type"] == "text-delta"  # dropped mid-answer
    message_id = first["chunks"][0]["messageId"]
    row = answer_row(shared_db, message_id)
    assert resumed is not None, "the answer was still streaming"
    message = resumed["message"]
    assert message["id"] == message_id
    assert seen_parts(message) == ui_parts(row)
    assert message["metadata"] == metadata(row)
    assert resumed["chunks"][-1]["type"] == "finish" and resumed["errors"] == []
    # The replay named every part as the first reading did.
    first_ids = {c["id"] for c in first["chunks"] if c["type"].endswith("-start") and "id" in c}
    replay_ids = {c["id"] for c in resumed["chunks"] if c["type"].endswith("-start") and "id" in c}
    assert first_ids <= replay_ids


def test_nothing_streaming_is_204_and_the_page_stays_as_it_was(
    two: tuple[Instance, Instance], token: str, shared_db: str
) -> None:
    a, b = two
    history = [user_message("hello")]
    reloaded = harness(do="reload", base=b.base, token=token, chatId="never-used", messages=history)
    assert reloaded["status"] == "ready" and reloaded["error"] is None
    assert reloaded["messages"] == history and reloaded["finished"] is None
    done = harness(
        do="chat", base=a.base, token=token, chatId="finished", actions=[{"send": "@fake chunks=3"}]
    )
    messages = done["states"][0]["messages"]
    again = harness(do="reload", base=b.base, token=token, chatId="finished", messages=messages)
    assert again["status"] == "ready" and again["messages"] == messages
    # Someone else's chat id is only a key of the caller's own: nothing streams there.
    other = make_user(shared_db, "aisdk-other")
    stranger = harness(do="reload", base=b.base, token=other, chatId="finished", messages=[])
    assert stranger["status"] == "ready" and stranger["messages"] == []


def test_cancel_ends_the_stream_with_abort(
    two: tuple[Instance, Instance], token: str, shared_db: str
) -> None:
    a, _ = two
    result = harness(
        do="cancel",
        base=a.base,
        token=token,
        chatId="cancelled",
        messages=[user_message("@fake chunks=400 delay=0.01")],
    )
    first = result["first"]
    types = [c["type"] for c in first["chunks"]]
    assert types[-3:] == ["finish-step", "message-metadata", "abort"]
    row = answer_row(shared_db, first["message"]["id"])
    assert row["status"] == "cancelled"
    assert seen_parts(first["message"]) == ui_parts(row)
    assert first["message"]["metadata"] == metadata(row)


def test_provider_failure_ends_the_stream_with_error(
    two: tuple[Instance, Instance], token: str, shared_db: str
) -> None:
    a, _ = two
    result = harness(
        do="chat",
        base=a.base,
        token=token,
        chatId="failing",
        actions=[{"send": "@fake chunks=40 fail_after=10"}],
    )
    (state,) = result["states"]
    answer = state["messages"][-1]
    row = answer_row(shared_db, answer["id"])
    assert row["status"] == "failed" and row["error"]
    assert state["status"] == "error" and state["error"] == row["error"]
    assert seen_parts(answer) == ui_parts(row)
    assert answer["metadata"] == metadata(row)


def test_a_reloaded_page_resumes_after_the_owner_is_killed(
    db: str, fake_llm: FakeLLMServer
) -> None:
    with serving(Instance(db, fake_llm), Instance(db, fake_llm)) as (a, b):
        token = make_user(db, "reloader")
        client = ApiClient(a.base, token)
        body = chat_body("killed", "@fake chunks=150 size=3 delay=0.02", "u1")
        response = client.post("/api/chat", body, stream=True, timeout=30)
        first = read_chunks(response, until="text-delta")
        message_id = first[0]["messageId"]
        wait_until(
            "some text is committed",
            lambda: answer_row(db, message_id)["content_length"] > 30,
        )
        a.signal(signal.SIGKILL)
        a.wait()
        partial = answer_row(db, message_id)["content"]
        # The page had persisted the messages as they were; reloaded, it resumes on b.
        shown = [
            user_message(body["messages"][0]["parts"][0]["text"]),
            {"id": message_id, "role": "assistant", "parts": [{"type": "text", "text": partial}]},
        ]
        reloaded = harness(do="reload", base=b.base, token=token, chatId="killed", messages=shown)
        row = answer_row(db, message_id)
        # Taken over (again, when a loaded machine lets the new owner's lease lapse).
        assert row["status"] == "completed" and row["epoch"] >= 2
        assert reloaded["status"] == "ready" and reloaded["error"] is None
        assert [m["id"] for m in reloaded["messages"]] == ["u1", message_id]
        answer = reloaded["messages"][1]
        assert seen_parts(answer) == [{"type": "text", "text": row["content"]}]
        assert row["content"].startswith(partial)
        assert answer["metadata"] == metadata(row)
        assert reloaded["finished"]["finishReason"] == "stop"
        # A takeover seen live is only a transient data chunk, never a part.
        assert all(d["type"] == "data-chatsvc-status" for d in reloaded["data"])


def test_a_graceful_stop_of_the_owner_does_not_end_the_stream(
    db: str, fake_llm: FakeLLMServer
) -> None:
    with serving(Instance(db, fake_llm), Instance(db, fake_llm)) as (a, _):
        client = ApiClient(a.base, make_user(db, "deployer"))
        body = chat_body("deploy", "@fake chunks=150 size=3 delay=0.02", "u1")
        response = client.post("/api/chat", body, stream=True, timeout=30)
        found: list[Any] = []
        for event in read_sse(response):
            found.append("[DONE]" if event.data == "[DONE]" else json.loads(event.data))
            if len(found) == 5:
                a.signal(signal.SIGTERM)  # a rolling deploy: b takes the answer over
        client.session.close()  # no keep-alive connection holds the stopping worker
        message = rebuild(found)
        row = answer_row(db, message["id"])
        # Taken over (again, when a loaded machine lets the new owner's lease lapse).
        assert row["status"] == "completed" and row["epoch"] >= 2
        assert message["parts"] == [{"type": "text", "text": row["content"]}]
        assert message["ending"] == {"type": "finish", "finishReason": "stop"}
        assert found[3]["type"] == "text-delta" and found[-1] == "[DONE]"


def test_regenerate_and_edit_from_use_chat(
    two: tuple[Instance, Instance], token: str, shared_db: str
) -> None:
    a, _ = two
    actions = [
        {"send": "@fake chunks=6 reasoning=2"},
        {"regenerate": True},
        {"edit": 0, "text": "@fake chunks=4 seed=edited"},
    ]
    sent, regenerated, edited = harness(
        do="chat", base=a.base, token=token, chatId="tree-chat", actions=actions
    )["states"]
    first = sent["messages"][1]
    user, answer = regenerated["messages"]
    assert user == sent["messages"][0] and answer["id"] != first["id"]
    row = answer_row(shared_db, answer["id"])
    assert seen_parts(answer) == ui_parts(row) and answer["metadata"] == metadata(row)
    # The regenerated answer is the first one's sibling: one parent for both.
    sql = "SELECT DISTINCT parent_id FROM messages WHERE id = ANY(%s::uuid[])"
    assert len(query(shared_db, sql, [first["id"], answer["id"]])) == 1
    # The edit keeps the client's id for the question; chatsvc stored a new version of it.
    question, reply = edited["messages"]
    assert question["id"] == user["id"] and question["parts"][0]["text"].endswith("edited")
    stored = answer_row(shared_db, reply["id"])
    assert seen_parts(reply) == ui_parts(stored)
    (conversation,) = query(
        shared_db,
        "SELECT c.id FROM conversations c JOIN messages m ON m.conversation_id = c.id "
        "WHERE m.id = %s",
        reply["id"],
    )
    client = ApiClient(a.base, token)
    shown = client.get(f"/api/conversations/{conversation['id']}").json()["messages"]
    assert [m["content"] for m in shown] == ["@fake chunks=4 seed=edited", stored["content"]]
    assert len(shown[0]["sibling_ids"]) == 2 and shown[1]["id"] == reply["id"]
    assert all(s["status"] == "ready" and s["error"] is None for s in (sent, regenerated, edited))
