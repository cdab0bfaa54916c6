"""A tool call's status: its legal moves, its key, and the part state derived from it."""

from __future__ import annotations

from uuid import uuid4

import pytest

from chatsvc.engine import ledger
from chatsvc.engine.ledger import Call, IllegalMove, Status

MESSAGE = uuid4()


def _entry(tool_call_id: str = "call_0_0", complete: bool = True) -> dict[str, object]:
    return {
        "type": "tool",
        "step": 0,
        "tool_call_id": tool_call_id,
        "name": "charge",
        "input_text": '{"amount": 5}',
        "complete": complete,
        "v": 1,
    }


def test_a_sent_call_runs_then_has_one_outcome_and_never_moves_again() -> None:
    call = Call.sent(MESSAGE, _entry(), {"amount": 5})
    assert (call.status, call.attempts, call.done) == (Status.RUNNING, 1, False)
    resent = call.move(Status.RUNNING)
    assert resent.attempts == 2 and resent.idempotency_key == call.idempotency_key
    done = resent.move(Status.SUCCEEDED, output={"ok": True})
    assert done.done and done.output == {"ok": True}
    for to in Status:
        with pytest.raises(IllegalMove):
            done.move(to)


def test_a_refused_call_is_failed_without_an_attempt() -> None:
    call = Call.refused(MESSAGE, _entry(), None, "not JSON")
    assert (call.status, call.attempts, call.error) == (Status.FAILED, 0, "not JSON")


def test_keys_are_the_same_for_one_call_and_differ_between_calls() -> None:
    assert ledger.key(MESSAGE, "a") == ledger.key(MESSAGE, "a")
    assert len({ledger.key(MESSAGE, "a"), ledger.key(MESSAGE, "b"), ledger.key(uuid4(), "a")}) == 3


def test_the_part_state_follows_the_layout_then_the_ledger() -> None:
    assert ledger.state(_entry(complete=False), None) == "input-streaming"
    assert ledger.state(_entry(), None) == "input-available"
    running = Call.sent(MESSAGE, _entry(), {"amount": 5})
    assert ledger.part(_entry(), running)["state"] == "input-available"
    ok = ledger.part(_entry(), running.move(Status.SUCCEEDED, output=[1]))
    assert ok == {
        "type": "tool",
        "tool_call_id": "call_0_0",
        "name": "charge",
        "input": {"amount": 5},
        "state": "output-available",
        "output": [1],
    }
    lost = ledger.part(_entry(), running.move(Status.UNKNOWN, error=ledger.UNKNOWN_AFTER_CRASH))
    assert lost["state"] == "output-error" and lost["error"] == ledger.UNKNOWN_AFTER_CRASH
    refused = ledger.part(_entry(), Call.refused(MESSAGE, _entry(), None, "bad"))
    assert refused["input"] == '{"amount": 5}' and refused["error"] == "bad"


def test_only_plain_json_enters_the_ledger() -> None:
    assert ledger.storable({"a": [1, "x", None, 2.5]}) and ledger.storable("text")
    assert not ledger.storable(float("nan"))
    assert not ledger.storable({"when": object()})
    assert not ledger.storable("nul \x00 inside")
