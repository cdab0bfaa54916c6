"""A stream's lifecycle: which moves are legal, and who is woken by the final ones."""

from __future__ import annotations

from uuid import uuid4

import pytest

from chatsvc.engine import events
from chatsvc.engine.stream import FINAL, NEXT, Ending, IllegalTransition, State, Stream

ENDING = Ending("completed")


def _stream(state: State = State.RUNNING) -> Stream:
    stream = Stream(uuid4(), uuid4(), None, "m", epoch=1, committed=5)
    path = {
        State.RUNNING: [],
        State.CANCELLING: [State.CANCELLING],
        State.RELEASING: [State.RELEASING],
        State.ENDING: [State.ENDING],
        State.ENDED: [State.ENDING, State.ENDED],
        State.RELEASED: [State.RELEASING, State.RELEASED],
        State.LOST: [State.LOST],
    }[state]
    for step in path:
        stream.move(step, ENDING if step is State.ENDING else None)
    return stream


LEGAL = [(a, b) for a in State for b in State if b in NEXT[a]]
ILLEGAL = [(a, b) for a in State for b in State if b not in NEXT[a]]


@pytest.mark.parametrize(("start", "to"), LEGAL, ids=lambda s: s.name)
def test_a_legal_move_changes_the_state(start: State, to: State) -> None:
    stream = _stream(start)
    stream.move(to, ENDING if to is State.ENDING else None)
    assert stream.state is to
    assert stream.ended.ready() == (to in FINAL)


@pytest.mark.parametrize(("start", "to"), ILLEGAL, ids=lambda s: s.name)
def test_an_illegal_move_is_refused_and_changes_nothing(start: State, to: State) -> None:
    stream = _stream(start)
    with pytest.raises(IllegalTransition):
        stream.move(to, ENDING if to is State.ENDING else None)
    assert stream.state is start


def test_the_lifecycle_the_code_relies_on() -> None:
    assert {
        (State.RUNNING, State.CANCELLING),
        (State.CANCELLING, State.ENDING),  # the greenlet ends a cancelled answer
        (State.CANCELLING, State.RELEASING),  # a shutdown hands it over all the same
        (State.RUNNING, State.ENDING),
        (State.ENDING, State.ENDED),
        (State.RELEASING, State.RELEASED),
    } <= set(LEGAL)
    assert all((state, State.LOST) in LEGAL for state in State if state not in FINAL)
    assert {State.ENDED, State.RELEASED, State.LOST} == FINAL
    # A stream being handed over is not ended by its greenlet; an ending one is not released.
    assert (State.RELEASING, State.ENDING) in ILLEGAL
    assert (State.ENDING, State.RELEASING) in ILLEGAL


def test_an_ending_goes_with_the_move_to_ending_and_only_with_it() -> None:
    stream = _stream()
    with pytest.raises(IllegalTransition):
        stream.move(State.ENDING)
    with pytest.raises(IllegalTransition):
        stream.move(State.CANCELLING, ENDING)
    assert stream.state is State.RUNNING and stream.ending is None
    stream.move(State.ENDING, ENDING)
    assert stream.ending is ENDING


@pytest.mark.parametrize(
    ("final", "value"), [(State.ENDED, True), (State.RELEASED, False), (State.LOST, False)]
)
def test_a_final_state_wakes_whoever_waits_for_the_end(final: State, value: bool) -> None:
    assert _stream(final).ended.get(timeout=0) is value


def test_text_is_accepted_until_the_stream_ends_or_is_lost() -> None:
    accepting = {s for s in State if _stream(s).accepts_text}
    assert accepting == {State.RUNNING, State.CANCELLING, State.RELEASING}
    handed_off = {s for s in State if _stream(s).handed_off}
    assert handed_off == {State.RELEASING, State.RELEASED, State.LOST}


def test_a_delta_starts_at_the_committed_offset() -> None:
    stream = _stream()
    delta = stream.delta("héllo")
    assert (delta.message_id, delta.start, delta.end, delta.text) == (
        stream.message_id,
        5,
        10,
        "héllo",
    )


def test_a_commit_takes_everything_pending_and_numbers_tool_changes_consecutively() -> None:
    stream = Stream(uuid4(), uuid4(), None, "m", epoch=1, committed=0)
    stream.add_reasoning("hm")
    stream.add_text("Let me")
    for fragment in ('{"a"', ":1", "}"):
        stream.layout.tool_fragment(0, 0, "c1", "add", fragment)
    stream.layout.tool_fragment(0, 1, "c2", "add", "{}")
    take = stream.take()
    assert (take.text, take.reasoning, take.version) == ("Let me", "hm", 2)
    changes = [e for e in take.events if isinstance(e, events.ToolChanged)]
    assert [(e.tool_call_id, e.version) for e in changes] == [("c1", 1), ("c2", 2)]
    assert changes[0].part is not None and changes[0].part["input"] == '{"a":1}'
    assert take.layout == stream.layout.entries and take.step is None
    stream.taken(take)
    assert (stream.committed, stream.committed_reasoning, stream.committed_version) == (6, 2, 2)
    assert not stream.has_pending and stream.take().events == []
