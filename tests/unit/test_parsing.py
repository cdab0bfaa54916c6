"""Validation errors keep the sentences, codes and statuses clients know (no database)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chatsvc.config import Settings
from chatsvc.errors import ApiError
from chatsvc.web import schemas
from chatsvc.web.event_schemas import SubscribeFrame
from chatsvc.web.parsing import Request, parse


def _error(model: type[Request], data: Any, settings: Settings | None = None) -> tuple[int, str]:
    with pytest.raises(ApiError) as caught:
        parse(model, data, settings)
    return caught.value.status, caught.value.message


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        ([], 422, "The request body must be a JSON object."),
        ({}, 422, "Field 'content' is required."),
        ({"content": None}, 422, "Field 'content' is required."),
        ({"content": "hi", "b": 1, "a": None}, 422, "Unknown field 'a'."),
        ({"content": 5}, 422, "Field 'content' must be a string."),
        ({"content": ""}, 422, "Field 'content' must not be empty."),
        ({"content": "a\x00b"}, 422, "Field 'content' must not contain NUL characters."),
        (
            {"content": json.loads('"\\ud800"')},
            422,
            "Field 'content' contains an unpaired surrogate.",
        ),
        ({"content": "x" * 32_001}, 413, "Field 'content' is longer than 32000 characters."),
        ({"content": "hi", "model": ""}, 422, "Field 'model' must not be empty."),
    ],
)
def test_body_errors(data: Any, status: int, message: str) -> None:
    assert _error(schemas.SendMessage, data) == (status, message)


def test_the_message_limit_comes_from_the_settings() -> None:
    small = Settings(max_message_chars=3)
    assert _error(schemas.SendMessage, {"content": "abcd"}, small)[0] == 413
    assert parse(schemas.SendMessage, {"content": "x" * 40_000}, Settings(max_message_chars=50_000))


def test_query_errors_and_empty_values() -> None:
    assert _error(schemas.ConversationsQuery, {"limit": "abc"}) == (
        400,
        "limit must be a non-negative integer.",
    )
    assert _error(schemas.ConversationsQuery, {"limit": "0"}) == (
        400,
        "Query parameter 'limit' must be between 1 and 200.",
    )
    assert _error(schemas.ConversationsQuery, {"before": "x"}) == (
        400,
        "Query parameter 'before' must be a UUID.",
    )
    # Empty is a value, refused like any malformed one; unknown parameters are ignored.
    assert _error(schemas.ConversationsQuery, {"before": ""}) == (
        400,
        "Query parameter 'before' must be a UUID.",
    )
    assert _error(schemas.ConversationsQuery, {"limit": ""})[0] == 400
    query = parse(schemas.ConversationsQuery, {"other": "1"})
    assert (query.limit, query.before) == (50, None)


def test_frame_offsets_are_json_integers() -> None:
    frame = {"type": "subscribe", "conversation_id": "00000000-0000-0000-0000-000000000000"}
    assert _error(SubscribeFrame, {**frame, "offset": "3"}) == (
        400,
        "Field 'offset' must be a non-negative integer.",
    )
    assert parse(SubscribeFrame, {**frame, "offset": 3}).offset == 3
