"""An answer's layout as its owner builds it from what the model streams."""

from __future__ import annotations

from chatsvc.engine.parts import Layout


def test_text_alone_from_the_first_call_needs_no_layout() -> None:
    layout = Layout()
    layout.text(0, "Hello ")
    layout.text(0, "world")
    assert layout.entries is None and layout.content_length == 11
    assert layout.snapshot() is None and layout.version == 0


def test_parts_are_cut_where_the_kind_or_the_model_call_changes() -> None:
    layout = Layout()
    layout.text(0, "Let me")
    layout.reasoning(0, "think")
    layout.reasoning(0, "ing")
    first = layout.tool_fragment(0, 0, "c1", "charge", '{"am')
    layout.tool_fragment(0, 0, None, None, 'ount":5}')
    layout.tool_fragment(0, 1, "c2", "lookup", "{}")
    assert layout.complete(0) == [first, layout.tools()[1]]
    layout.reasoning(1, "more")
    layout.text(1, " see")
    layout.text(1, "!")
    assert layout.entries == [
        {"type": "text", "step": 0, "start": 0},
        {"type": "reasoning", "step": 0, "start": 0},
        {
            "type": "tool",
            "step": 0,
            "tool_call_id": "c1",
            "name": "charge",
            "input_text": '{"amount":5}',
            "complete": True,
            "v": 4,
        },
        {
            "type": "tool",
            "step": 0,
            "tool_call_id": "c2",
            "name": "lookup",
            "input_text": "{}",
            "complete": True,
            "v": 5,
        },
        {"type": "reasoning", "step": 1, "start": 8},
        {"type": "text", "step": 1, "start": 6},
    ]
    assert (layout.content_length, layout.reasoning_length, layout.version) == (11, 12, 5)


def test_every_tool_change_is_a_new_version_kept_on_its_part() -> None:
    layout = Layout()
    entry = layout.tool_fragment(0, 0, None, "clock", "")
    assert entry["tool_call_id"] == "call_0_0" and entry["v"] == 1
    layout.changed(entry)
    assert entry["v"] == layout.version == 2
    assert layout.complete(0) == [entry] and entry["v"] == 3
    assert layout.complete(0) == []


def test_a_snapshot_does_not_change_with_the_layout() -> None:
    layout = Layout()
    layout.tool_fragment(0, 0, "c1", "charge", "{")
    snapshot = layout.snapshot()
    layout.tool_fragment(0, 0, None, None, "}")
    assert snapshot is not None and snapshot[0]["input_text"] == "{"


def test_a_restored_layout_goes_on_from_the_committed_state() -> None:
    committed = [{"type": "text", "step": 0, "start": 0}]
    layout = Layout.restore(committed, 5, 0, 0)
    layout.text(0, "more")
    layout.reasoning(1, "r")
    assert committed == [{"type": "text", "step": 0, "start": 0}]
    assert layout.entries == [*committed, {"type": "reasoning", "step": 1, "start": 0}]
    assert layout.content_length == 9


def test_a_reused_tool_call_id_is_made_unique_within_the_answer() -> None:
    layout = Layout()
    layout.tool_fragment(0, 0, "call_1", "add", "{}")
    layout.tool_fragment(0, 0, "call_1", None, "")  # an id repeated in a later fragment
    layout.tool_fragment(1, 0, "call_1", "add", "{}")
    assert [e["tool_call_id"] for e in layout.tools()] == ["call_1", "call_1_1_0"]
