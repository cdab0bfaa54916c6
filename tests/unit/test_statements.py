"""How a statement is prepared for running together with others."""

from __future__ import annotations

import pytest

from chatsvc.engine.statements import _numbered


def test_a_name_used_twice_is_one_parameter() -> None:
    name, text, order = _numbered("SELECT %(a)s::int + %(b)s::int WHERE %(a)s::int > 0")
    assert text == "SELECT $1::int + $2::int WHERE $1::int > 0"
    assert order == ["a", "b"]
    assert name.startswith("chatsvc_")


def test_positional_placeholders_are_numbered_in_order_and_percent_signs_kept() -> None:
    _, text, order = _numbered("SELECT %s, 'x%%', %s")
    assert (text, order) == ("SELECT $1, 'x%', $2", [])


def test_the_name_is_the_statement_s() -> None:
    assert _numbered("SELECT %s")[0] == _numbered("SELECT %s")[0] != _numbered("SELECT 1")[0]


def test_named_and_positional_placeholders_do_not_mix() -> None:
    with pytest.raises(ValueError, match="all named or all positional"):
        _numbered("SELECT %s, %(a)s")
