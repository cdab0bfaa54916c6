"""The checkpointer's schedule: which streams the next commit takes, and how long it sleeps."""

from __future__ import annotations

import math
from uuid import uuid4

import pytest

from chatsvc.engine.checkpoint import Checkpointer, due
from chatsvc.engine.stream import Ending, State, Stream
from tests.support import TEST_SETTINGS

NOW = 1000.0
RENEW = 1.0


def _stream(*, renewed_ago: float = 0.0, pending: str = "", checkpointed_ago: float = 99) -> Stream:
    stream = Stream(uuid4(), uuid4(), None, "m", epoch=1, committed=0)
    stream.renewed_at = NOW - renewed_ago
    stream.checkpointed_at = NOW - checkpointed_ago
    stream.pending = [pending] if pending else []
    return stream


@pytest.mark.parametrize("min_interval", [0.0, 0.5])
def test_ending_and_releasing_streams_are_always_due(min_interval: float) -> None:
    ending, releasing = _stream(checkpointed_ago=0), _stream(checkpointed_ago=0)
    ending.move(State.ENDING, Ending("completed"))
    releasing.move(State.RELEASING)
    idle = _stream(renewed_ago=0.25)
    batch, wait = due([ending, releasing, idle], NOW, RENEW, min_interval)
    assert batch == [ending, releasing]
    assert wait == pytest.approx(0.75)  # the idle stream's renewal


def test_pending_text_is_due_at_once_without_a_minimum_interval() -> None:
    stream = _stream(pending="a", checkpointed_ago=0)
    assert due([stream], NOW, RENEW, 0.0)[0] == [stream]


def test_a_minimum_interval_holds_text_back_until_it_has_passed() -> None:
    held = _stream(pending="a", checkpointed_ago=0.1)
    ready = _stream(pending="b", checkpointed_ago=0.5)
    batch, wait = due([held, ready], NOW, RENEW, 0.5)
    assert batch == [ready]
    assert wait == pytest.approx(0.4)
    assert due([held], NOW + 0.4, RENEW, 0.5)[0] == [held]


def test_a_lease_is_renewed_every_renew_interval_even_without_text() -> None:
    stale = _stream(renewed_ago=RENEW)
    fresh = _stream(renewed_ago=0.9)
    batch, wait = due([stale, fresh], NOW, RENEW, 0.0)
    assert batch == [stale]
    assert wait == pytest.approx(0.1)


def test_a_renewal_is_due_even_while_text_is_held_back() -> None:
    stream = _stream(renewed_ago=RENEW, pending="a", checkpointed_ago=0)
    assert due([stream], NOW, RENEW, 0.5)[0] == [stream]


def test_with_nothing_to_do_it_sleeps_a_renew_interval_and_never_zero() -> None:
    assert due([], NOW, RENEW, 0.0) == ([], RENEW)
    # A renewal overdue by the time of the call still sleeps a little, not a negative time.
    (batch, wait) = due([_stream(renewed_ago=RENEW - 1e-9)], NOW, RENEW, 0.0)
    assert batch == [] and 0 < wait <= 0.001


def test_text_that_waited_half_the_interval_rides_along_with_a_commit_due_anyway() -> None:
    ready = _stream(pending="a", checkpointed_ago=0.5)
    rider = _stream(pending="b", checkpointed_ago=0.3)
    early = _stream(pending="c", checkpointed_ago=0.2)
    batch, wait = due([ready, rider, early], NOW, RENEW, 0.5)
    assert batch == [ready, rider]
    assert wait == pytest.approx(0.2)  # rider's own time, had it not ridden along
    # With nothing due, a rider does not start a commit by itself.
    batch, wait = due([rider, early], NOW, RENEW, 0.5)
    assert batch == [] and wait == pytest.approx(0.2)


def _committed(stream: Stream) -> Stream:
    """Commit what the stream has pending (as the checkpointer does), as of NOW."""
    stream.taken(stream.take())
    stream.checkpointed_at = NOW
    return stream


def test_the_first_text_of_an_answer_is_due_at_once_and_later_text_waits() -> None:
    stream = _stream(checkpointed_ago=0)
    stream.checkpointed_at = 0.0  # as a new stream starts
    stream.add_text("Hel")
    assert due([stream], NOW, RENEW, 0.1)[0] == [stream]
    _committed(stream).add_text("lo")
    batch, wait = due([stream], NOW + 0.01, RENEW, 0.1)
    assert batch == [] and wait == pytest.approx(0.09)


def test_the_first_text_of_each_part_is_due_at_once() -> None:
    stream = _stream()
    stream.checkpointed_at = 0.0
    stream.add_reasoning("think")
    _committed(stream).add_reasoning(" more")
    assert due([stream], NOW + 0.01, RENEW, 0.1)[0] == []  # the same part: it waits
    _committed(stream).add_text("The answer")  # a new part: the text after the reasoning
    assert due([stream], NOW + 0.01, RENEW, 0.1)[0] == [stream]
    _committed(stream).add_text(" goes on")
    assert due([stream], NOW + 0.01, RENEW, 0.1)[0] == []
    stream.step = 1  # the next model call (after a tool call): its text is a new part
    _committed(stream).add_text("Then")
    assert due([stream], NOW + 0.01, RENEW, 0.1)[0] == [stream]


def test_a_token_wakes_the_checkpointer_only_when_its_text_is_due_before_the_loop_wakes() -> None:
    checkpointer = Checkpointer("postgresql://unused", TEST_SETTINGS, lambda events: None)
    assert checkpointer.min_interval == pytest.approx(0.1)
    steady = _stream()
    steady.checkpointed_at = 0.0
    steady.add_text("Hel")
    _committed(steady)  # committed at NOW: its next text is due at NOW + 0.1
    first = _stream()
    first.checkpointed_at = 0.0  # an answer's first text: due at once

    # The loop sleeps until steady's text is due anyway: another token need not wake it.
    checkpointer._asleep_until = NOW + 0.1
    checkpointer.append(steady, "more")
    assert not checkpointer._wake.is_set()
    checkpointer.append(first, "Hello")
    assert checkpointer._wake.is_set()

    # Sleeping until later (a lease renewal), text due sooner wakes it.
    checkpointer._wake.clear()
    checkpointer._asleep_until = NOW + 1.0
    checkpointer.append(steady, " and more")
    assert checkpointer._wake.is_set()

    # While the loop is not waiting (committing), every token sets the event, so that the
    # wait after the commit returns at once and looks again.
    checkpointer._wake.clear()
    checkpointer._asleep_until = math.inf
    checkpointer.append(steady, "!")
    assert checkpointer._wake.is_set()
