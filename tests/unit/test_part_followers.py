"""A follower of an answer with parts: reasoning offsets, tool versions, composite ids, order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import pytest

from chatsvc.engine.events import Delta, Finished, ReasoningDelta, ToolChanged
from chatsvc.engine.followers import MessageFollower, Out, Sources
from chatsvc.engine.hub import Hub
from chatsvc.engine.messages import PartsFrom
from chatsvc.engine.positions import Position

C, M = uuid4(), uuid4()
USAGE = {"prompt_tokens": 3, "completion_tokens": 4}


def tool(call: str, state: str = "input-available", **more: Any) -> dict[str, Any]:
    """A tool part as message_parts() shows it."""
    return {"type": "tool", "tool_call_id": call, "name": "charge", "state": state, **more}


def entry(kind: str, start: int = 0, *, call: str = "", v: int = 0) -> dict[str, Any]:
    """A layout entry."""
    if kind == "tool":
        return {"type": "tool", "step": 0, "tool_call_id": call, "name": "charge", "v": v}
    return {"type": kind, "step": 0, "start": start}


@dataclass(frozen=True)
class Answer(Sources):
    """Sources whose database is one answer with parts, held in memory; records every read."""

    row: dict[str, Any] = field(default_factory=dict)
    reads: list[str] = field(default_factory=list)

    def read(self, message_id: UUID, position: Position) -> PartsFrom | None:
        self.reads.append(str(position))
        r = self.row
        layout = r["layout"]
        return PartsFrom(
            M,
            C,
            r["status"],
            1,
            len(r["text"]),
            len(r["reasoning"]),
            r["version"],
            layout,
            r["text"][position.content :],
            r["reasoning"][position.reasoning :],
            r.get("parts", list(r["tools"].values())),
            USAGE if r["status"] != "streaming" else None,
            None,
        )

    def commit(self, **changes: Any) -> None:
        """The answer as the database now has it."""
        self.row.update(changes)


@pytest.fixture
def answer() -> Answer:
    answer = Answer(pool=None, hub=Hub(10), heartbeat_s=15.0, rows=None)  # type: ignore[arg-type]
    answer.commit(
        status="streaming",
        text="abcdef",
        reasoning="thinkmore",
        version=2,
        tools={"c1": tool("c1")},
        layout=[
            entry("reasoning"),
            entry("text"),
            entry("tool", call="c1", v=2),
            entry("reasoning", 5),
            entry("text", 3),
        ],
    )
    return answer


def _follow(answer: Answer, position: str = "0") -> tuple[MessageFollower, list[Out]]:
    follower = MessageFollower(answer)
    _, first = follower.open(M, Position.parse(position, "offset"))
    answer.reads.clear()
    return follower, first


def _events(outs: list[Out]) -> list[tuple[str, Any, str | None]]:
    def what(out: Out) -> Any:
        if out.event == "tool":
            return (out.data["tool_call_id"], out.data["state"])
        return out.data.get("text", out.data.get("status"))

    return [(out.event, what(out), out.id) for out in outs]


def test_a_catch_up_follows_the_order_of_the_parts(answer: Answer) -> None:
    _, first = _follow(answer)
    assert _events(first) == [
        ("reasoning", "think", "0.5.1"),
        ("delta", "abc", "3.5.1"),
        ("tool", ("c1", "input-available"), "3.5.2"),
        ("reasoning", "more", "3.9.2"),
        ("delta", "def", "6.9.2"),
    ]
    assert "".join(o.data["text"] for o in first if o.event == "delta") == "abcdef"


def test_a_catch_up_from_a_composite_position_sends_only_what_is_missing(answer: Answer) -> None:
    _, first = _follow(answer, "3.5.2")
    assert _events(first) == [("reasoning", "more", "3.9.2"), ("delta", "def", "6.9.2")]
    _, first = _follow(answer, "4.9.1")
    assert _events(first) == [
        ("tool", ("c1", "input-available"), "4.9.2"),
        ("delta", "ef", "6.9.2"),
    ]


def test_a_bare_offset_is_content_only_so_every_other_part_is_sent(answer: Answer) -> None:
    _, first = _follow(answer, "6")
    assert [e for e, _, _ in _events(first)] == ["reasoning", "tool", "reasoning"]
    assert first[-1].id == "6.9.2"


def test_tool_parts_out_of_version_order_advance_the_id_safely(answer: Answer) -> None:
    answer.commit(
        version=4,
        tools={"c1": tool("c1"), "c2": tool("c2", "input-streaming")},
        layout=[entry("tool", call="c1", v=4), entry("tool", call="c2", v=3), entry("text")],
        reasoning="",
    )
    _, first = _follow(answer)
    # After c1 (v 4) the client still lacks change 3 (c2): its id must not claim it.
    assert [o.id for o in first] == ["0.0.2", "0.0.4", "6.0.4"]


def test_reasoning_is_trimmed_where_it_overlaps(answer: Answer) -> None:
    follower, _ = _follow(answer)
    outs = follower.on_event(ReasoningDelta(C, M, 7, 12, "re!!!"))
    assert _events(outs) == [("reasoning", "!!!", "6.12.2")]
    assert outs[0].data["offset"] == 9
    assert follower.on_event(ReasoningDelta(C, M, 0, 9, "thinkmore")) == []
    assert answer.reads == []


@pytest.mark.parametrize(
    "event", [ReasoningDelta(C, M, 10, 12, "!!"), ReasoningDelta(C, M, 9, 12, None)]
)
def test_reasoning_with_a_gap_or_without_text_is_read(answer: Answer, event: Any) -> None:
    follower, _ = _follow(answer)
    answer.commit(reasoning="thinkmore!!!")
    assert _events(follower.on_event(event)) == [("reasoning", "!!!", "6.12.2")]
    assert answer.reads == ["6.9.2"]


def test_tool_changes_in_order_are_sent_duplicates_dropped(answer: Answer) -> None:
    follower, _ = _follow(answer)
    done = tool("c1", "output-available", output={"ok": True})
    outs = follower.on_event(ToolChanged(C, M, 3, "c1", done))
    assert _events(outs) == [("tool", ("c1", "output-available"), "6.9.3")]
    assert outs[0].data == {
        "message_id": M,
        "tool_call_id": "c1",
        "name": "charge",
        "state": "output-available",
        "output": {"ok": True},
    }
    assert follower.on_event(ToolChanged(C, M, 3, "c1", done)) == []
    assert follower.on_event(ToolChanged(C, M, 2, "c1", tool("c1"))) == []
    assert answer.reads == []


@pytest.mark.parametrize(
    "event",
    [ToolChanged(C, M, 4, "c1", tool("c1", "output-error")), ToolChanged(C, M, 3, "c1", None)],
    ids=["gap", "no part"],
)
def test_a_tool_change_after_a_gap_or_without_its_part_is_read(answer: Answer, event: Any) -> None:
    follower, _ = _follow(answer)
    answer.commit(version=4, tools={"c1": tool("c1", "output-error", error="timed out")})
    answer.row["layout"][2]["v"] = 4
    outs = follower.on_event(event)
    assert _events(outs) == [("tool", ("c1", "output-error"), "6.9.4")]
    assert outs[0].data["error"] == "timed out"
    assert answer.reads == ["6.9.2"]
    assert follower.on_event(ToolChanged(C, M, 4, "c1", tool("c1", "output-error"))) == []


def test_ids_become_composite_once_the_answer_has_a_part(answer: Answer) -> None:
    answer.commit(reasoning="", version=0, tools={}, layout=None, text="hello")
    follower, first = _follow(answer)
    assert _events(first) == [("delta", "hello", "5")]
    outs = follower.on_event(Delta(C, M, 5, 6, "!"))
    assert [o.id for o in outs] == ["6"]
    outs = follower.on_event(ReasoningDelta(C, M, 0, 2, "hm"))
    assert [o.id for o in outs] == ["6.2.0"]
    outs = follower.on_event(Delta(C, M, 6, 7, "?"))
    assert [o.id for o in outs] == ["7.2.0"]


def test_done_waits_until_reasoning_and_tools_are_caught_up(answer: Answer) -> None:
    follower, _ = _follow(answer)
    answer.commit(status="completed", reasoning="thinkmore.", version=3)
    answer.row["tools"]["c1"] = tool("c1", "output-available", output=1)
    answer.row["layout"][2]["v"] = 3
    outs = follower.on_event(Finished(C, M, "completed", 6, USAGE, None))
    assert _events(outs) == [
        ("tool", ("c1", "output-available"), "6.9.3"),
        ("reasoning", ".", "6.10.3"),
        ("done", "completed", "6.10.3"),
    ]
    assert answer.reads == ["6.9.2"] and follower.is_finished()


def test_a_finished_answer_without_layout_is_caught_up_from_its_parts(answer: Answer) -> None:
    answer.commit(
        status="completed",
        layout=None,
        parts=[
            {"type": "reasoning", "text": "think"},
            {"type": "text", "text": "abc"},
            tool("c1", "output-available", output=1),
            {"type": "reasoning", "text": "more"},
            {"type": "text", "text": "def"},
        ],
    )
    _, first = _follow(answer, "1.5.0")
    assert _events(first) == [
        ("delta", "bc", "3.5.1"),
        ("tool", ("c1", "output-available"), "3.5.2"),
        ("reasoning", "more", "3.9.2"),
        ("delta", "def", "6.9.2"),
        ("done", "completed", "6.9.2"),
    ]


def test_text_before_the_first_part_of_the_layout_comes_first(answer: Answer) -> None:
    answer.commit(reasoning="", version=1, layout=[entry("tool", call="c1", v=1), entry("text", 3)])
    _, first = _follow(answer)
    assert _events(first) == [
        ("delta", "abc", "3.0.0"),
        ("tool", ("c1", "input-available"), "3.0.1"),
        ("delta", "def", "6.0.1"),
    ]
