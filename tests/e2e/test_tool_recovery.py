"""Tool calls happen exactly once across a SIGKILL of the process that runs them.

Two real instances share a database and a tools file; the answer's owner is
killed at a chosen moment, found through the database, the fake tool server's
`arrived` event or the fake LLM's `stalled` event (never a sleep); the other
instance takes the answer over and finishes it.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import pytest

from chatsvc.fakellm import parse_directives, script_text
from tests.e2e.conftest import Instance
from tests.faketools import FakeToolServer
from tests.support import FakeLLMServer, FollowResult, follow_message, make_user, query, wait_until

pytestmark = pytest.mark.e2e


@dataclass
class Outcome:
    """What the scenario left: the answer's row, its ledger, what a client read."""

    message_id: str
    row: dict[str, Any]
    ledger: list[dict[str, Any]]
    read: FollowResult  # a client that knows only `delta`
    read_parts: FollowResult  # a client that reads every part
    llm_calls: list[tuple[int, int, int, bool]]
    requests: int


def _tools_file(tmp_path: Path, tools: FakeToolServer) -> Path:
    declared = {
        "add": (tools.url("ok", "add"), False),
        "charge": (tools.url("slow", "charge"), False),
        "lookup": (tools.url("slow", "lookup", idempotent=True), True),
    }
    path = tmp_path / "tools.toml"
    path.write_text(
        "".join(
            f'[[tools]]\nname = "{name}"\nurl = "{url}"\nidempotent = {str(idem).lower()}\n'
            "timeout_s = 120\n\n"
            for name, (url, idem) in declared.items()
        )
    )
    return path


def _answer(db: str, message_id: str) -> dict[str, Any]:
    (row,) = query(
        db,
        "SELECT status, content, content_length, epoch, usage, error, parts, layout, step "
        "FROM messages WHERE id = %s",
        message_id,
    )
    return row


Scenario = Callable[..., Outcome]


@pytest.fixture
def kill_owner_when(
    db: str, fake_llm: FakeLLMServer, fake_tools: FakeToolServer, tmp_path: Path
) -> Scenario:
    """Run a question on two instances and SIGKILL its owner at the moment given."""

    def scenario(
        question: str,
        moment: Callable[[str], bool],
        after_kill: Callable[[str], None] | None = None,
        stop: Callable[[Instance], None] = Instance.kill,
    ) -> Outcome:
        return _kill_owner_when(
            db, fake_llm, fake_tools, tmp_path, question, moment, after_kill, stop
        )

    return scenario


def _release_when_resent(tools: FakeToolServer) -> Callable[[str], None]:
    """After the kill: once the first call was sent a second time, let both requests end."""

    def release(message_id: str) -> None:
        key = f"chatsvc:{message_id}:call_0_0"
        wait_until("the resend", lambda: tools.app.attempts(key) == 2)
        tools.app.release.set()

    return release


def _kill_owner_when(
    db: str,
    llm: FakeLLMServer,
    tools: FakeToolServer,
    tmp_path: Path,
    question: str,
    moment: Callable[[str], bool],
    after_kill: Callable[[str], None] | None = None,
    stop: Callable[[Instance], None] = Instance.kill,
) -> Outcome:
    env = {"CHATSVC_TOOLS_FILE": str(_tools_file(tmp_path, tools))}
    a, b = (Instance(db, llm, env=env).start() for _ in range(2))
    try:
        a.wait_ready()
        b.wait_ready()
        token = make_user(db, "tess")
        client = a.client(token)
        conversation = client.conversation()
        message_id: str = client.send(conversation["id"], question)["assistant_message"]["id"]
        bases = [a.base, b.base]
        follower = gevent.spawn(follow_message, bases, token, message_id)
        parts_follower = gevent.spawn(follow_message, bases, token, message_id, parts=True)
        wait_until("the moment to kill", lambda: moment(message_id))
        stop(a)
        if after_kill is not None:
            after_kill(message_id)
        read: FollowResult = follower.get(timeout=90)
        read_parts: FollowResult = parts_follower.get(timeout=90)
    finally:
        a.stop()
        b.stop()
    calls = query(
        db,
        "SELECT step, prompt_tokens, completion_tokens, estimated FROM llm_calls "
        "WHERE message_id = %s ORDER BY created_at",
        message_id,
    )
    ledger = query(
        db, "SELECT * FROM tool_calls WHERE message_id = %s ORDER BY tool_call_id", message_id
    )
    requests = [
        r for r in llm.app.requests if any(m.get("content") == question for m in r["messages"])
    ]
    outcome = Outcome(
        message_id,
        _answer(db, message_id),
        ledger,
        read,
        read_parts,
        [tuple(c.values()) for c in calls],  # type: ignore[misc]
        len(requests),
    )
    row = outcome.row
    # Every scenario: taken over once, finished, the text a client read is the content,
    # and every model call counted once (a call cut by the kill is estimated).
    assert row["status"] == "completed" and row["epoch"] == 2, row
    assert read.done is not None and read.text == row["content"]
    # A client reading every part, reconnecting with its last id, rebuilt them all.
    assert read_parts.text == row["content"]
    stored = row["parts"]
    assert read_parts.reasoning == "".join(p["text"] for p in stored if p["type"] == "reasoning")
    shown = {p["tool_call_id"]: p for p in stored if p["type"] == "tool"}
    assert read_parts.tools.keys() == shown.keys()
    for call_id, event in read_parts.tools.items():
        assert {k: v for k, v in event.items() if k != "message_id"} == {
            k: v for k, v in shown[call_id].items() if k != "type"
        }
    assert row["content"] == script_text(parse_directives(question))
    assert len(outcome.llm_calls) == outcome.requests
    assert row["usage"]["prompt_tokens"] == sum(c[1] for c in outcome.llm_calls)
    assert row["usage"]["completion_tokens"] == sum(c[2] for c in outcome.llm_calls)
    return outcome


def test_killed_while_the_model_streams_the_arguments(
    db: str, fake_llm: FakeLLMServer, fake_tools: FakeToolServer, kill_owner_when: Scenario
) -> None:
    pad = "x" * 80
    question = f'@fake calls=add:{{"n":1,"pad":"{pad}"}} size=1 delay=0.03 chunks=8 seed=a'

    def streaming_arguments(message_id: str) -> bool:
        tools = [e for e in _answer(db, message_id)["layout"] or () if e["type"] == "tool"]
        return bool(tools) and not tools[0]["complete"] and len(tools[0]["input_text"]) > 10

    outcome = kill_owner_when(question, streaming_arguments)
    (call,) = outcome.ledger
    assert (call["status"], call["attempts"]) == ("failed", 0) and "not run" in call["error"]
    assert fake_tools.app.received == []  # never sent
    tool, text = outcome.row["parts"]
    assert tool["state"] == "output-error" and text["type"] == "text"
    assert outcome.requests == 2 and outcome.llm_calls[0][3]  # the cut call is estimated


def test_killed_while_a_tool_that_is_not_idempotent_runs(
    db: str, fake_llm: FakeLLMServer, fake_tools: FakeToolServer, kill_owner_when: Scenario
) -> None:
    question = '@fake calls=charge:{"n":5} chunks=20 seed=b'
    outcome = kill_owner_when(question, lambda _: fake_tools.app.arrived.is_set())
    (call,) = outcome.ledger
    assert (call["status"], call["attempts"]) == ("unknown", 1)
    assert "unknown" in call["error"]
    assert fake_tools.app.attempts(call["idempotency_key"]) == 1  # not sent again
    tool = outcome.row["parts"][0]
    assert tool["state"] == "output-error" and tool["error"] == call["error"]
    told = [m for m in fake_llm.app.requests[-1]["messages"] if m["role"] == "tool"]
    assert "unknown" in told[-1]["content"]
    assert outcome.requests == 2 and not any(c[3] for c in outcome.llm_calls)


def _sigterm(instance: Instance) -> None:
    instance.signal(signal.SIGTERM)


# A graceful hand-over (SIGTERM) is, for a running call, like a crash.
@pytest.mark.parametrize("stop", [Instance.kill, _sigterm], ids=["sigkill", "sigterm"])
def test_killed_while_an_idempotent_tool_runs(
    fake_tools: FakeToolServer, kill_owner_when: Scenario, stop: Callable[[Instance], None]
) -> None:
    question = f'@fake calls=lookup:{{"n":7}} chunks=20 seed=c{stop.__name__}'

    outcome = kill_owner_when(
        question,
        lambda _: fake_tools.app.arrived.is_set(),
        after_kill=_release_when_resent(fake_tools),
        stop=stop,
    )
    (call,) = outcome.ledger
    assert (call["status"], call["attempts"], call["epoch"]) == ("succeeded", 2, 2)
    key = call["idempotency_key"]
    assert fake_tools.app.attempts(key) == 2 and fake_tools.app.effects(key) == 1
    assert {r.key for r in fake_tools.app.received} == {key}  # the same key both times
    assert outcome.row["parts"][0]["output"]["effect"] == 1


def test_killed_after_the_result_committed_before_the_next_model_call(
    db: str, fake_llm: FakeLLMServer, fake_tools: FakeToolServer, kill_owner_when: Scenario
) -> None:
    fake_llm.app.stalled.clear()
    fake_llm.app.release.clear()
    question = '@fake calls=add:{"n":3} chunks=20 stall_step=1 seed=d'
    outcome = kill_owner_when(
        question,
        lambda _: fake_llm.app.stalled.is_set(),
        after_kill=lambda _: fake_llm.app.release.set(),
    )
    (call,) = outcome.ledger
    assert (call["status"], call["attempts"]) == ("succeeded", 1)
    key = call["idempotency_key"]
    assert fake_tools.app.attempts(key) == 1 and fake_tools.app.effects(key) == 1
    # Step 0, step 1 cut by the kill (estimated), step 1 again.
    assert [(c[0], c[3]) for c in outcome.llm_calls] == [(0, False), (1, True), (1, False)]
    results = [m for m in fake_llm.app.requests[-1]["messages"] if m["role"] == "tool"]
    assert json.loads(results[-1]["content"])["effect"] == 1  # the stored result


def test_killed_while_the_final_text_streams(
    db: str, fake_llm: FakeLLMServer, fake_tools: FakeToolServer, kill_owner_when: Scenario
) -> None:
    question = '@fake calls=add:{"n":4} chunks=200 size=2 delay=0.01 reasoning=3 seed=e'

    def mid_text(message_id: str) -> bool:
        row = _answer(db, message_id)
        return row["step"] == 1 and row["content_length"] > 40

    outcome = kill_owner_when(question, mid_text)
    (call,) = outcome.ledger
    assert (call["status"], call["attempts"]) == ("succeeded", 1)
    assert fake_tools.app.attempts(call["idempotency_key"]) == 1
    kinds = [p["type"] for p in outcome.row["parts"]]
    assert kinds[:3] == ["reasoning", "tool", "reasoning"] and kinds[-1] == "text"
    assert outcome.requests == 3
