"""The seam of a continuation, and the layout a continued answer starts from (no database)."""

from __future__ import annotations

from uuid import uuid4

import pytest

from chatsvc.engine.continuation import WINDOW, Seam, Stopped, carried_over, repeated


def _through(before: str, pieces: list[str]) -> str:
    seam = Seam(before)
    return "".join(seam.feed(p) for p in pieces) + seam.flush()


@pytest.mark.parametrize(
    ("before", "pieces", "written"),
    [
        # The model repeats the last words, in tokens: the repetition is cut.
        ("The quick brown fox", [" brown", " fox", " jumps", " over"], " jumps over"),
        ("It was late. We left", ["We left", " at", " dawn."], " at dawn."),
        # It goes on without repeating anything: nothing is cut.
        ("The quick brown fox", [" jumps", " over"], " jumps over"),
        # Fewer than four code points are taken at their word.
        ("…with th", ["the", " cat"], "the cat"),
        ("abc", ["abc", "d"], "abcd"),  # too little before to look for a repetition
        # Code points, not bytes or graphemes.
        ("漢字 👩\u200d👩\u200d👧 ok", ["👩\u200d👩\u200d👧 ok", "!"], "!"),
        # Nothing at all after the repetition.
        ("hello world", ["lo world"], ""),
    ],
)
def test_a_repeated_end_is_cut(before: str, pieces: list[str], written: str) -> None:
    assert _through(before, pieces) == written


def test_text_is_held_only_while_it_may_be_a_repetition() -> None:
    seam = Seam("The quick brown fox")
    assert seam.feed(" brow") == ""  # may still be the start of " brown fox"
    assert seam.feed("n fox") == ""  # it is: the whole end, held until more comes
    assert seam.feed(" jumps") == " jumps"  # no longer in the old text: decided
    assert seam.feed(" far") == " far"  # and from then on it passes through
    fresh = Seam("The quick brown fox")
    assert fresh.feed(" zebra") == " zebra"  # never in the old text: at once


def test_no_more_than_the_window_is_held() -> None:
    before = "ab" * WINDOW
    seam = Seam(before)
    out = [seam.feed("ab" * 10) for _ in range(WINDOW // 20)]
    assert out[:-1] == [""] * (len(out) - 1)
    assert out[-1] == ""  # WINDOW code points came: all of it repeated the end, cut
    assert seam.feed("cd") == "cd"


def test_an_empty_seam_passes_everything_through() -> None:
    seam = Seam("")
    assert seam.feed("abc") == "abc" and seam.flush() == ""


def test_repeated_counts_the_longest_overlap() -> None:
    assert repeated("say abab", "ababX") == 4
    assert repeated("abcdef", "xyz") == 0
    assert repeated("aaaa", "aaaaaa") == 4


def _stopped(layout: list[dict[str, object]] | None, length: int = 10) -> Stopped:
    return Stopped(uuid4(), uuid4(), "cancelled", 1, 2, layout, length)


def test_the_part_being_written_is_carried_over_to_the_next_call() -> None:
    assert carried_over(_stopped(None)) == [{"type": "text", "step": 3, "start": 0}]
    assert carried_over(_stopped(None, length=0)) is None
    layout = [
        {"type": "reasoning", "step": 0, "start": 0},
        {
            "type": "tool",
            "step": 0,
            "tool_call_id": "c",
            "name": "t",
            "input_text": "{}",
            "complete": True,
            "v": 2,
        },
        {"type": "text", "step": 2, "start": 0},
    ]
    carried = carried_over(_stopped(layout))
    assert carried is not None and carried[-1] == {"type": "text", "step": 3, "start": 0}
    assert carried[:2] == layout[:2] and layout[-1]["step"] == 2  # a copy
    # Stopped at a tool call: the next model call starts a part of its own.
    assert carried_over(_stopped(layout[:2])) == layout[:2]
