"""A follower's offsets: overlaps trimmed, gaps read from the database, `done` when caught up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import pytest

from chatsvc.engine.events import AccessRevoked, Delta, Finished, StatusChanged
from chatsvc.engine.followers import MessageFollower, Out, Sources
from chatsvc.engine.hub import Hub
from chatsvc.engine.messages import PartsFrom
from chatsvc.engine.positions import Position

C, M = uuid4(), uuid4()
USAGE = {"prompt_tokens": 3, "completion_tokens": 4}


@dataclass(frozen=True)
class Table(Sources):
    """Sources whose database is one message held in memory; records every read."""

    message: dict[str, Any] = field(default_factory=dict)
    reads: list[tuple[UUID, int]] = field(default_factory=list)

    def read(self, message_id: UUID, position: Position) -> PartsFrom | None:
        self.reads.append((message_id, position.content))
        if message_id != M or self.message.get("deleted"):
            return None
        m = self.message
        text = m["text"]
        return PartsFrom(
            M,
            C,
            m["status"],
            m["epoch"],
            len(text),
            0,
            0,
            None,
            text[position.content :],
            "",
            None,
            m["usage"],
            m["error"],
        )

    def commit(self, text: str, *, status: str = "streaming", epoch: int | None = None) -> None:
        """The message as the database now has it."""
        ended = status != "streaming"
        self.message.update(
            text=text,
            status=status,
            epoch=self.message["epoch"] if epoch is None else epoch,
            usage=USAGE if ended else None,
            error=None,
        )


@pytest.fixture
def table() -> Table:
    table = Table(pool=None, hub=Hub(10), heartbeat_s=15.0, rows=None)  # type: ignore[arg-type]
    table.message.update(epoch=1)
    table.commit("hello")
    return table


def _follow(table: Table, offset: int = 0) -> tuple[MessageFollower, list[Out]]:
    follower = MessageFollower(table)
    _, first = follower.open(M, Position(offset))
    table.reads.clear()
    return follower, first


def _deltas(outs: list[Out]) -> list[tuple[int, str, str | None]]:
    return [(o.data["offset"], o.data["text"], o.id) for o in outs if o.event == "delta"]


def test_opening_sends_what_is_committed_after_the_offset(table: Table) -> None:
    follower, first = _follow(table, 2)
    assert _deltas(first) == [(2, "llo", "5")]
    assert follower.tracks[M].offset == 5


def test_a_delta_that_continues_the_text_is_sent_as_it_is(table: Table) -> None:
    follower, _ = _follow(table)
    assert _deltas(follower.on_event(Delta(C, M, 5, 11, " world"))) == [(5, " world", "11")]
    assert table.reads == []


def test_a_delta_overlapping_what_was_sent_is_trimmed(table: Table) -> None:
    follower, _ = _follow(table)
    assert _deltas(follower.on_event(Delta(C, M, 3, 11, "lo world"))) == [(5, " world", "11")]
    assert follower.on_event(Delta(C, M, 0, 5, "hello")) == []  # all of it was sent
    assert table.reads == []


@pytest.mark.parametrize(
    "delta", [Delta(C, M, 8, 11, "rld"), Delta(C, M, 5, 11, None)], ids=["gap", "no text"]
)
def test_a_delta_leaving_a_gap_or_without_text_reads_the_missing_range(
    table: Table, delta: Delta
) -> None:
    follower, _ = _follow(table)
    table.commit("hello world")
    assert _deltas(follower.on_event(delta)) == [(5, " world", "11")]
    assert table.reads == [(M, 5)]


def test_finished_before_all_text_arrived_catches_up_then_ends(table: Table) -> None:
    follower, _ = _follow(table)
    table.commit("hello world", status="completed")
    outs = follower.on_event(Finished(C, M, "completed", 11, USAGE, None))
    assert _deltas(outs) == [(5, " world", "11")]
    assert outs[-1].event == "done" and outs[-1].id == "11"
    assert outs[-1].data["usage"] == USAGE and outs[-1].data["content_length"] == 11
    assert table.reads == [(M, 5)] and follower.is_finished()


def test_finished_without_usage_reads_the_ending_from_the_row(table: Table) -> None:
    follower, _ = _follow(table)
    table.commit("hello", status="failed")
    outs = follower.on_event(Finished(C, M, "failed", 5, None, ""))  # trimmed to fit
    assert [o.event for o in outs] == ["done"] and outs[0].data["status"] == "failed"
    assert table.reads == [(M, 5)]


def test_finished_when_caught_up_ends_without_reading(table: Table) -> None:
    follower, _ = _follow(table)
    outs = follower.on_event(Finished(C, M, "completed", 5, USAGE, None))
    assert [(o.event, o.id) for o in outs] == [("done", "5")]
    assert table.reads == [] and follower.is_finished()
    assert follower.on_event(Delta(C, M, 5, 6, "!")) == []  # nothing after done


def test_status_is_sent_only_for_a_newer_epoch(table: Table) -> None:
    follower, _ = _follow(table)
    assert follower.on_event(StatusChanged(C, M, "streaming", 1, True)) == []
    (out,) = follower.on_event(StatusChanged(C, M, "streaming", 2, True))
    assert (out.event, out.data["epoch"], out.data["resumed"]) == ("status", 2, True)
    assert follower.on_event(StatusChanged(C, M, "streaming", 2, True)) == []
    assert follower.on_event(StatusChanged(C, M, "streaming", 1, False)) == []


def test_connecting_to_an_answer_taken_over_since_it_started_says_so_first(table: Table) -> None:
    assert [o.event for o in _follow(table)[1]] == ["delta"]  # epoch 1: never changed hands
    table.commit("hello", epoch=2)
    _, first = _follow(table, 2)
    assert [o.event for o in first] == ["status", "delta"]
    assert first[0].data == {"message_id": M, "status": "streaming", "epoch": 2, "resumed": True}
    table.commit("hello", status="completed", epoch=3)
    _, first = _follow(table, 5)
    assert [(o.event, o.data.get("epoch")) for o in first] == [("status", 3), ("done", None)]


def test_a_catch_up_raises_the_epoch_so_an_older_status_is_not_sent(table: Table) -> None:
    follower, _ = _follow(table)
    table.commit("hello world", epoch=3)
    follower.on_event(Delta(C, M, 7, 11, "orld"))
    assert follower.tracks[M].epoch == 3
    assert follower.on_event(StatusChanged(C, M, "streaming", 2, True)) == []


def test_events_of_other_messages_are_ignored(table: Table) -> None:
    follower, _ = _follow(table)
    other = uuid4()
    assert follower.on_event(Delta(C, other, 0, 3, "abc")) == []
    assert follower.on_event(Finished(C, other, "completed", 3, USAGE, None)) == []
    assert table.reads == []


def test_a_deleted_message_ends_the_track_quietly(table: Table) -> None:
    follower, _ = _follow(table)
    table.message["deleted"] = True
    assert follower.on_event(Delta(C, M, 8, 11, "rld")) == []
    assert follower.is_finished()


def test_a_follower_extended_with_its_user_ends_when_that_user_loses_access(table: Table) -> None:
    user, other = uuid4(), uuid4()
    follower, first = _follow(table)
    assert follower.sub is not None
    table.hub.extend(follower.sub, user)
    stream = follower.events(first)
    assert [o.event for o in first] == ["delta"]
    next(stream)
    table.hub.publish([AccessRevoked(other)])
    table.commit("hello world")
    table.hub.publish([Delta(C, M, 5, 11, " world")])
    out = next(stream)
    assert out is not None and _deltas([out]) == [(5, " world", "11")]
    table.hub.publish([AccessRevoked(user)])
    assert list(stream) == []
    follower.close()
    assert table.hub.subscriber_count == 0
