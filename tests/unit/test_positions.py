"""Stream positions as clients send them back: one strict spelling, and cursors that round-trip."""

from __future__ import annotations

from uuid import uuid4

import pytest

from chatsvc.engine.positions import MAX_DIGITS, Cursor, Position, parse_offset
from chatsvc.errors import InvalidRequest


@pytest.mark.parametrize(
    ("raw", "offset"), [("0", 0), ("5", 5), ("007", 7), ("9" * 12, 10**12 - 1)]
)
def test_plain_ascii_digits_are_an_offset(raw: str, offset: int) -> None:
    assert parse_offset(raw, "offset") == offset


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "+5",
        "-1",
        "1_0",
        " 5",
        "5 ",
        "5\n",
        "٣",
        "\uff15",  # fullwidth five
        "1.0",
        "1e3",
        "0x1",
    ],
)
def test_anything_else_is_refused_naming_the_parameter(raw: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^offset must be a non-negative integer"):
        parse_offset(raw, "offset")


def test_thirteen_digits_are_too_many() -> None:
    assert MAX_DIGITS == 12
    with pytest.raises(InvalidRequest):
        parse_offset("1" * 13, "offset")


def test_a_cursor_round_trips() -> None:
    cursor = Cursor(uuid4(), Position(42))
    assert str(cursor) == f"{cursor.message_id}:42"
    assert Cursor.parse(str(cursor)) == cursor
    composite = Cursor(cursor.message_id, Position(42, 7, 3, composite=True))
    assert str(composite) == f"{cursor.message_id}:42.7.3"
    assert Cursor.parse(str(composite)) == composite


@pytest.mark.parametrize(
    "raw", ["", "42", ":42", "not-a-uuid:42", f"{uuid4()}", f"{uuid4()}:"], ids=repr
)
def test_a_cursor_without_a_message_id_is_refused(raw: str) -> None:
    with pytest.raises(InvalidRequest):
        Cursor.parse(raw)


@pytest.mark.parametrize("offset", ["+5", "-1", "1_0", " 5", "٣", "1" * 13])
def test_a_cursor_offset_follows_the_same_strict_rule(offset: str) -> None:
    with pytest.raises(InvalidRequest, match="position in Last-Event-ID"):
        Cursor.parse(f"{uuid4()}:{offset}")


def test_a_position_is_a_bare_offset_or_three_fields() -> None:
    assert Position.parse("42", "offset") == Position(42)
    assert str(Position(42)) == "42"
    composite = Position.parse("42.7.3", "Last-Event-ID")
    assert composite == Position(42, 7, 3, composite=True)
    assert str(composite) == "42.7.3"


@pytest.mark.parametrize("raw", ["1.2", "1.2.3.4", "1..3", "1.+2.3", "1.2.x", ".1.2", "1.2. 3"])
def test_a_malformed_position_is_refused(raw: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^Last-Event-ID must be"):
        Position.parse(raw, "Last-Event-ID")
