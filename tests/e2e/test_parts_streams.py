"""Answers with reasoning and tool calls, streamed across real gunicorn processes.

Readers that drop their connection at random and come back with the last id
they saw must end with every part exactly once: the answer text, the
reasoning, and each tool call's final state, as the database has them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest

from chatsvc.fakellm import parse_directives, script_text
from tests.e2e.conftest import Instance, serving
from tests.faketools import FakeToolServer
from tests.support import (
    FakeLLMServer,
    FollowResult,
    follow_message,
    make_user,
    query,
    wait_until,
)

pytestmark = pytest.mark.e2e

QUESTION = (
    "@fake reasoning=8 chunks=50 size=3 delay=0.01 alphabet=mixed "
    'calls=lookup:{"q":"weather"};charge:{"amount":5}'
)


@pytest.fixture(scope="module")
def fake_tools() -> Iterator[FakeToolServer]:
    server = FakeToolServer(slow_s=0.3)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tools_pair(
    shared_db: str,
    fake_llm: FakeLLMServer,
    fake_tools: FakeToolServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Instance, Instance]]:
    """Two instances on one database, with a lookup tool and a charge tool."""
    tools = Path(tmp_path_factory.mktemp("tools")) / "tools.toml"
    tools.write_text(
        f"""
[[tools]]
name = "lookup"
description = "Look something up."
url = "{fake_tools.url("slow", "lookup", idempotent=True)}"
idempotent = true
parameters = {{ type = "object", properties = {{ q = {{ type = "string" }} }} }}

[[tools]]
name = "charge"
description = "Charge the customer."
url = "{fake_tools.url("ok", "charge")}"
parameters = {{ type = "object", properties = {{ amount = {{ type = "number" }} }} }}
""",
        encoding="utf-8",
    )
    env = {"CHATSVC_TOOLS_FILE": str(tools)}
    with serving(
        Instance(shared_db, fake_llm, env=env), Instance(shared_db, fake_llm, env=env)
    ) as (
        a,
        b,
    ):
        yield a, b


def _read_with_drops(bases: list[str], token: str, message_id: str, seed: int) -> FollowResult:
    """Follow every part to `done`, dropping the connection after a random number of events."""
    rng = random.Random(seed)
    return follow_message(
        bases,
        token,
        message_id,
        parts=True,
        drop_after=lambda: rng.randint(1, 12),
        max_seconds=90,
        distinct_tools=True,
    )


def test_reconnecting_readers_get_every_part_once_across_instances(
    tools_pair: tuple[Instance, Instance], token: str, fake_tools: FakeToolServer
) -> None:
    a, b = tools_pair
    message_id = a.client(token).ask(QUESTION)
    bases = [a.base, b.base]
    readers = [gevent.spawn(_read_with_drops, bases, token, message_id, seed) for seed in range(8)]
    plain = gevent.spawn(follow_message, bases, token, message_id)
    gevent.joinall([*readers, plain], timeout=120, raise_error=True)
    message = a.client(token).get(f"/api/messages/{message_id}").json()
    assert message["status"] == "completed", message
    parts = message["parts"]
    reasoning = "".join(p["text"] for p in parts if p["type"] == "reasoning")
    final_tools = {p["tool_call_id"]: p for p in parts if p["type"] == "tool"}
    assert {p["state"] for p in final_tools.values()} == {"output-available"}
    assert message["content"] == "".join(p["text"] for p in parts if p["type"] == "text")
    assert reasoning and reasoning not in message["content"]
    for greenlet in readers:
        reader: FollowResult = greenlet.value
        assert reader.connections > 1, "the reader should have reconnected"
        assert reader.text == message["content"]
        assert reader.reasoning == reasoning
        assert set(reader.tools) == set(final_tools)
        for call_id, last in reader.tools.items():
            # A `tool` event is the part without its type, with its message id.
            final = {k: v for k, v in final_tools[call_id].items() if k != "type"}
            assert last == {"message_id": message_id, **final}
    # A client that knows only `delta` reads exactly the answer text.
    assert plain.value.text == message["content"]
    # Each call was sent once, whatever the readers did.
    for key in {r.key for r in fake_tools.app.received if r.body.get("message_id") == message_id}:
        assert key is not None and fake_tools.app.attempts(key) == 1


def _reasoning_length(db_url: str, message_id: str) -> int:
    return int(
        query(db_url, "SELECT reasoning_length FROM messages WHERE id = %s", message_id)[0][
            "reasoning_length"
        ]
    )


def test_a_takeover_mid_reasoning_keeps_what_was_shown_and_goes_on(
    db: str, fake_llm: FakeLLMServer
) -> None:
    with serving(Instance(db, fake_llm), Instance(db, fake_llm)) as (a, b):
        token = make_user(db, "rhea")
        message_id = a.client(token).ask("@fake reasoning=150 size=2 chunks=20 delay=0.01")
        reader = gevent.spawn(_read_with_drops, [a.base, b.base], token, message_id, 99)
        wait_until("some reasoning", lambda: _reasoning_length(db, message_id) >= 40)
        a.kill()
        seen: FollowResult = reader.get(timeout=90)
        message = b.client(token).get(f"/api/messages/{message_id}").json()
        assert message["status"] == "completed" and message["epoch"] == 2
        reasoning = "".join(p["text"] for p in message["parts"] if p["type"] == "reasoning")
        # Offsets were contiguous for the reader (follow_message asserts it), so what
        # it was shown before the kill is a prefix of what it ended with.
        assert seen.reasoning == reasoning and len(reasoning) >= 40
        assert (
            seen.text
            == message["content"]
            == script_text(parse_directives("@fake reasoning=150 size=2 chunks=20 delay=0.01"))
        )


def _requests_for(fake_llm: FakeLLMServer, question: str) -> list[dict[str, Any]]:
    return [
        r for r in fake_llm.app.requests if any(m.get("content") == question for m in r["messages"])
    ]


def test_cancel_during_a_running_tool_ends_the_loop_at_once(
    tools_pair: tuple[Instance, Instance], token: str, fake_llm: FakeLLMServer, shared_db: str
) -> None:
    a, b = tools_pair
    question = '@fake calls=lookup:{"q":"slow"} seed=cancel-tool'
    message_id = a.client(token).ask(question)
    running = "SELECT 1 FROM tool_calls WHERE message_id = %s AND status = 'running'"
    wait_until("the call to start", lambda: query(shared_db, running, message_id))
    assert b.client(token).post(f"/api/messages/{message_id}/cancel").status_code == 202
    final = b.client(token).wait_terminal(message_id)
    assert final["status"] == "cancelled"
    (tool,) = [p for p in final["parts"] if p["type"] == "tool"]
    assert tool["state"] == "output-error" and tool["error"]
    (row,) = query(shared_db, "SELECT status FROM tool_calls WHERE message_id = %s", message_id)
    assert row["status"] in ("unknown", "failed")
    assert len(_requests_for(fake_llm, question)) == 1, "the model was called again"


def test_refused_calls_and_the_step_limit_through_gunicorn(
    tools_pair: tuple[Instance, Instance], token: str, fake_llm: FakeLLMServer, shared_db: str
) -> None:
    a, _ = tools_pair
    refused = '@fake calls=charge:{"amount":"five"};nope:{} seed=refused'
    answer = a.client(token).wait_terminal(a.client(token).ask(refused))
    assert answer["status"] == "completed"
    states = {p["name"]: p for p in answer["parts"] if p["type"] == "tool"}
    assert states["charge"]["state"] == states["nope"]["state"] == "output-error"
    assert "amount" in states["charge"]["error"] and "nope" in states["nope"]["error"]
    rows = query(shared_db, "SELECT attempts FROM tool_calls WHERE message_id = %s", answer["id"])
    assert [r["attempts"] for r in rows] == [0, 0]
    told = _requests_for(fake_llm, refused)[-1]["messages"]
    assert [m["content"] for m in told if m["role"] == "tool"] == [
        f"Error: {states['charge']['error']}",
        f"Error: {states['nope']['error']}",
    ]
    endless = '@fake calls=charge:{"amount":1} steps=50 seed=endless'
    stopped = a.client(token).wait_terminal(a.client(token).ask(endless), timeout=60)
    assert stopped["status"] == "completed" and "CHATSVC_MAX_STEPS" in stopped["error"]
    assert len(_requests_for(fake_llm, endless)) == 8
    ledger = query(
        shared_db,
        "SELECT status, attempts FROM tool_calls WHERE message_id = %s ORDER BY step",
        stopped["id"],
    )
    assert [r["status"] for r in ledger] == ["succeeded"] * 7 + ["failed"]
    assert ledger[-1]["attempts"] == 0
