"""The NOTIFY wire format: every kind round-trips, order holds, no payload reaches the limit."""

from __future__ import annotations

import json
import random
from uuid import UUID, uuid4

import pytest

from chatsvc.engine import events
from chatsvc.engine.events import (
    AccessRevoked,
    CancelRequested,
    ConversationDeleted,
    Delta,
    Event,
    Finished,
    LeasesReleased,
    MessageCreated,
    ProjectEvent,
    ReasoningDelta,
    StatusChanged,
    ToolChanged,
    UserEvent,
)

C, M, P = uuid4(), uuid4(), uuid4()
# Characters whose JSON takes 1 to 6 bytes: ASCII, accents, CJK, emoji, escapes.
ALPHABET = ["a", "é", "漢", "😀", "\n", '"', "\\", "\x01", "\u2028", "ß"]


def _text(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(length))


def _payload_sizes(items: list[str | None], numbers: list[int]) -> list[int]:
    """The bytes of each payload, joining the present items of each number as SQL does."""
    groups: dict[int, list[str]] = {}
    for one, number in zip(items, numbers, strict=True):
        if one is not None:
            groups.setdefault(number, []).append(one)
    return [len(events.payload(group).encode()) for group in groups.values()]


def _round_trip(batch: list[Event]) -> list[Event]:
    return [event for text in events.encode(batch) for event in events.decode(text)]


EVERY_KIND: list[Event] = [
    MessageCreated(C, M),
    Delta(C, M, 3, 9, "héllo😀"),
    Delta(C, M, 3, 9, None),
    ReasoningDelta(C, M, 0, 4, "hmm…"),
    ReasoningDelta(C, M, 0, 4, None),
    ToolChanged(C, M, 3, "call_1", {"type": "tool", "state": "output-available", "output": [1]}),
    ToolChanged(C, M, 4, "call_1", None),
    StatusChanged(C, M, "streaming", 2, True),
    Finished(C, M, "completed", 9, {"prompt_tokens": 1, "completion_tokens": 2}, None),
    Finished(C, M, "failed", 0, None, "boom"),
    CancelRequested(C, M),
    ConversationDeleted(C),
    LeasesReleased(),
    AccessRevoked(P),
    events.project_event(P, "stream.started", conversation_id=C, message_id=M, user_id=None),
    events.room_event(None, P, "conversation.updated", conversation_id=C, title="Hi"),
]


@pytest.mark.parametrize("event", EVERY_KIND, ids=lambda e: type(e).__name__)
def test_every_kind_round_trips(event: Event) -> None:
    assert _round_trip([event]) == [event]


def test_a_project_event_carries_its_data_as_plain_json() -> None:
    (event,) = _round_trip([events.project_event(P, "stream.finished", message_id=M, status="x")])
    assert event == ProjectEvent(
        P, "stream.finished", {"project_id": str(P), "message_id": str(M), "status": "x"}
    )


def test_a_private_conversation_s_room_event_goes_to_its_owner() -> None:
    owner = uuid4()
    (event,) = _round_trip([events.room_event(None, owner, "stream.started", message_id=M)])
    assert event == UserEvent(owner, "stream.started", {"project_id": None, "message_id": str(M)})
    shared = events.room_event(P, owner, "stream.started", message_id=M)
    assert isinstance(shared, ProjectEvent) and shared.project_id == P


def test_many_events_keep_their_order_across_payloads_all_under_the_limit() -> None:
    rng = random.Random(7)
    batch: list[Event] = []
    for i in range(400):
        text = _text(rng, rng.randint(0, 900))
        batch.append(Delta(C, uuid4(), i, i + len(text), text))
        if i % 7 == 0:
            batch.append(MessageCreated(C, uuid4()))
    payloads = events.encode(batch)
    assert len(payloads) > 10
    assert all(len(p.encode()) <= events.MAX_PAYLOAD_BYTES for p in payloads)
    assert [e for p in payloads for e in events.decode(p)] == batch


def test_payloads_are_filled_greedily() -> None:
    items: list[str | None] = [events.item(Delta(C, M, 0, 300, "漢" * 300))] * 40
    numbers = events.pack(items)
    assert numbers == sorted(numbers)
    grows = len(str(items[0]).encode()) + 1
    sizes = _payload_sizes(items, numbers)
    assert all(size + grows > events.MAX_PAYLOAD_BYTES for size in sizes[:-1])


def test_the_worst_case_stays_under_postgres_limit() -> None:
    # The largest item alone, then the largest items after one another, then
    # items one byte apart in size around the points where a payload is cut.
    assert events.MAX_ITEM_BYTES + 2 <= events.MAX_PAYLOAD_BYTES < events.PAYLOAD_LIMIT_BYTES
    largest = '["x","' + "a" * (events.MAX_ITEM_BYTES - 8) + '"]'
    assert len(largest.encode()) == events.MAX_ITEM_BYTES
    cut = events.MAX_PAYLOAD_BYTES // 2
    lengths = [*range(2, 200), *range(cut - 80, cut + 80), *range(7700, events.MAX_ITEM_BYTES + 1)]
    items: list[str | None] = [largest] * 3 + ['"' + "a" * (n - 2) + '"' for n in lengths]
    sizes = _payload_sizes(items, events.pack(items))
    assert max(sizes) <= events.MAX_PAYLOAD_BYTES
    assert sizes[:3] == [events.MAX_PAYLOAD_BYTES] * 3


def test_dropping_items_from_a_payload_keeps_it_under_the_limit() -> None:
    # What the checkpoint statement does with fenced rows: absent items take no room.
    rng = random.Random(11)
    items: list[str | None] = [events.item(Delta(C, M, 0, 1, _text(rng, 700))) for _ in range(60)]
    kept = [one if rng.random() < 0.5 else None for one in items]
    assert max(_payload_sizes(kept, events.pack(items))) <= events.MAX_PAYLOAD_BYTES
    assert events.pack([None, items[0], None]) == [0, 0, 0]


@pytest.mark.parametrize("text", ["😀" * 2000, "漢" * 2700, "a" * 7800, "\x02" * 1400])
def test_a_delta_too_large_to_carry_goes_without_its_text(text: str) -> None:
    delta = Delta(C, M, 10, 10 + len(text), text)
    assert len(events.item(delta).encode()) <= events.MAX_ITEM_BYTES
    assert _round_trip([delta]) == [Delta(C, M, 10, 10 + len(text), None)]


def test_reasoning_and_tool_parts_too_large_to_carry_go_without_them() -> None:
    text = "漢" * 2700
    reasoning = ReasoningDelta(C, M, 0, len(text), text)
    tool = ToolChanged(C, M, 1, "call_1", {"type": "tool", "output": text})
    assert _round_trip([reasoning, tool]) == [
        ReasoningDelta(C, M, 0, len(text), None),
        ToolChanged(C, M, 1, "call_1", None),
    ]


def test_a_delta_that_fits_keeps_its_text() -> None:
    text = "😀" * 1900  # 7600 bytes
    assert _round_trip([Delta(C, M, 0, len(text), text)])[0] == Delta(C, M, 0, len(text), text)


def test_an_oversized_finished_is_trimmed_to_status_and_length() -> None:
    usage = {f"field_{i}": i for i in range(1000)}
    event = Finished(C, M, "failed", 42, usage, "é" * 5000)
    assert len(events.item(event).encode()) <= events.MAX_ITEM_BYTES
    (trimmed,) = _round_trip([event])
    assert trimmed == Finished(C, M, "failed", 42, None, "é" * events.TRIMMED_ERROR_CHARS)


def test_an_event_that_cannot_shrink_is_refused() -> None:
    with pytest.raises(ValueError, match="too large"):
        events.item(events.project_event(P, "x" * 9000))


def test_the_items_are_json_arrays_named_by_their_kind() -> None:
    assert json.loads(events.item(CancelRequested(C, M))) == ["c", str(C), str(M)]
    assert events.decode(f'[["c", "{C}", "{M}"]]') == [CancelRequested(C, UUID(str(M)))]


def test_a_streams_events_travel_joined_or_all_in_their_small_forms() -> None:
    part = {"type": "tool", "tool_call_id": "t", "name": "n", "state": "input-available"}
    batch: list[Event] = [
        Delta(C, M, 0, 3, "abc"),
        ReasoningDelta(C, M, 0, 2, "hm"),
        ToolChanged(C, M, 4, "t", part),
    ]
    assert events.joined([]) is None
    joined = events.joined(batch)
    assert joined is not None and events.decode("[" + joined + "]") == batch
    big: list[Event] = [Delta(C, M, 0, 4000, "x" * 4000), ReasoningDelta(C, M, 0, 4000, "y" * 4000)]
    small = events.joined([*big, ToolChanged(C, M, 5, "t", part)])
    assert small is not None and len(small.encode()) <= events.MAX_ITEM_BYTES
    assert [getattr(e, "text", getattr(e, "part", None)) for e in events.decode(f"[{small}]")] == [
        None,
        None,
        None,
    ]
