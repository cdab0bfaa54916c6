"""The parts of an answer as psql sees them: message_parts() while streaming and after."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from tests.support import chunk

Conn = psycopg.Connection[Any]


def _answer(conn: Conn, layout: Any = None) -> Any:
    user = conn.execute("INSERT INTO users (name) VALUES ('u') RETURNING id").fetchone()[0]
    conversation = conn.execute(
        "INSERT INTO conversations (user_id) VALUES (%s) RETURNING id", (user,)
    ).fetchone()[0]
    return conn.execute(
        "INSERT INTO messages (conversation_id, role, status, layout) "
        "VALUES (%s, 'assistant', 'streaming', %s) RETURNING id",
        (conversation, None if layout is None else json.dumps(layout)),
    ).fetchone()[0]


def _parts(conn: Conn, message: Any) -> Any:
    return conn.execute(
        "SELECT message_parts(m), message_text(m) FROM messages m WHERE id = %s", (message,)
    ).fetchone()


def test_a_plain_answer_is_one_text_part_and_reasoning_is_never_its_content(conn: Conn) -> None:
    message = _answer(conn)
    assert _parts(conn, message) == ([], "")
    chunk(conn, message, "text", 0, "Hello ")
    chunk(conn, message, "text", 6, "wörld 😀")
    assert _parts(conn, message) == ([{"type": "text", "text": "Hello wörld 😀"}], "Hello wörld 😀")


def test_a_finished_answer_of_text_alone_is_its_content(conn: Conn) -> None:
    message = _answer(conn)
    conn.execute(
        "UPDATE messages SET status = 'completed', content = 'Hi', completed_at = now() "
        "WHERE id = %s",
        (message,),
    )
    assert _parts(conn, message) == ([{"type": "text", "text": "Hi"}], "Hi")
    conn.execute("UPDATE messages SET content = '' WHERE id = %s", (message,))
    assert _parts(conn, message) == ([], "")
    # Stored parts (every answer finished before migration 0008; any answer of more
    # than text) are read as stored.
    parts = [{"type": "reasoning", "text": "hmm"}, {"type": "text", "text": "Hi"}]
    conn.execute(
        "UPDATE messages SET content = 'Hi', parts = %s WHERE id = %s", (json.dumps(parts), message)
    )
    assert _parts(conn, message) == (parts, "Hi")


def test_parts_follow_the_layout_across_kinds_and_steps(conn: Conn) -> None:
    layout = [
        {"type": "reasoning", "step": 0, "start": 0},
        {"type": "text", "step": 0, "start": 0},
        {
            "type": "tool",
            "step": 0,
            "tool_call_id": "c1",
            "name": "charge",
            "input_text": '{"amount":5}',
            "complete": True,
            "v": 3,
        },
        {
            "type": "tool",
            "step": 0,
            "tool_call_id": "c2",
            "name": "lookup",
            "input_text": '{"q":',
            "complete": False,
            "v": 4,
        },
        {"type": "reasoning", "step": 1, "start": 7},
        {"type": "text", "step": 1, "start": 5},
    ]
    message = _answer(conn, layout)
    chunk(conn, message, "reasoning", 0, "think ")
    chunk(conn, message, "reasoning", 6, "1more")
    chunk(conn, message, "text", 0, "Let m")
    chunk(conn, message, "text", 5, "e see")
    parts, text = _parts(conn, message)
    assert text == "Let me see"
    assert parts == [
        {"type": "reasoning", "text": "think 1"},
        {"type": "text", "text": "Let m"},
        {
            "type": "tool",
            "tool_call_id": "c1",
            "name": "charge",
            "input": '{"amount":5}',
            "state": "input-available",
        },
        {
            "type": "tool",
            "tool_call_id": "c2",
            "name": "lookup",
            "input": '{"q":',
            "state": "input-streaming",
        },
        {"type": "reasoning", "text": "more"},
        {"type": "text", "text": "e see"},
    ]
    conn.execute(
        "INSERT INTO tool_calls (message_id, tool_call_id, step, name, arguments, status, "
        "idempotency_key, output, epoch, attempts, finished_at) VALUES "
        "(%s, 'c1', 0, 'charge', '{\"amount\": 5}', 'succeeded', 'k1', '{\"ok\": true}', 1, 1, "
        "now()), (%s, 'c2', 0, 'lookup', NULL, 'unknown', 'k2', NULL, 1, 1, now())",
        (message, message),
    )
    conn.execute("UPDATE tool_calls SET error = 'outcome unknown' WHERE tool_call_id = 'c2'")
    parts, _ = _parts(conn, message)
    assert parts[2] == {
        "type": "tool",
        "tool_call_id": "c1",
        "name": "charge",
        "input": {"amount": 5},
        "state": "output-available",
        "output": {"ok": True},
    }
    assert parts[3]["state"] == "output-error" and parts[3]["error"] == "outcome unknown"
    view = conn.execute(
        "SELECT reasoning_length, parts FROM active_streams WHERE message_id = %s", (message,)
    ).fetchone()
    assert view == (11, parts)


def test_a_finished_answer_shows_its_stored_parts(conn: Conn) -> None:
    message = _answer(conn)
    stored = [{"type": "reasoning", "text": "r"}, {"type": "text", "text": "t"}]
    conn.execute(
        "UPDATE messages SET status = 'completed', completed_at = now(), content = 't', "
        "parts = %s WHERE id = %s",
        (json.dumps(stored), message),
    )
    assert _parts(conn, message) == (stored, "t")
