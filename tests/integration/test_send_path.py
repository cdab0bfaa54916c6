"""The reads a send makes before its model call: what they return, and what they cost."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import psycopg
import pytest

from chatsvc.engine import db, history, messages, status
from chatsvc.engine.messages import NewAnswer
from chatsvc.errors import StreamActive, Unavailable
from chatsvc.web.context import statement
from tests.support import new_conversation


def _finish(conn: psycopg.Connection[Any], answer: Any, text: str) -> None:
    conn.execute(
        "UPDATE messages SET status = 'completed', content = %s, content_length = length(%s), "
        "completed_at = now() WHERE id = %s",
        (text, text, answer),
    )


def _insert(
    conn: psycopg.Connection[Any],
    user: Any,
    conversation: Any,
    parent: Any,
    content: str | None,
    key: str | None = None,
) -> tuple[Any, Any] | None:
    answer = NewAnswer(user, "openai/fake", "test:1", 30.0)
    return messages.insert_exchange(
        conn, conversation, parent, content=content, client_message_id=key, answer=answer
    )


def test_a_new_exchange_reads_as_it_will_once_committed(db_url: str) -> None:
    """`read_new` and `said_before_new` skip the assembling reads; they must give what the
    assembling ones give for the same rows."""
    with psycopg.connect(db_url) as conn:
        user, conversation = new_conversation(conn)
        first = _insert(conn, user, conversation, None, "first question")
        assert first is not None
        _finish(conn, first[1], "first answer")
        conn.commit()
        second = _insert(conn, user, conversation, first[1], "second question")
        assert second is not None
        question, answer = second
        new = messages.read_new(conn, [question, answer])
        new_branch = history.said_before_new(conn, question, answer)
        conn.commit()
        assert new == messages.read(conn, [question, answer])
        assert new_branch == history.said_before(conn, answer)
        assert [m.role for m in new] == ["user", "assistant"]
        assert new[0].sibling_ids == [question] and new[1].parent_id == question
        assert [s.content for s in new_branch[0]] == [
            "first question",
            "first answer",
            "second question",
        ]


def test_the_exchange_is_one_statement_that_the_indexes_decide(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        user, conversation = new_conversation(conn)
        inserted = _insert(conn, user, conversation, None, "q", "k")
        assert inserted is not None
        seqs = conn.execute(
            "SELECT role, seq FROM messages WHERE id = ANY(%s) ORDER BY seq", (list(inserted),)
        ).fetchall()
        assert [role for role, _ in seqs] == ["user", "assistant"]
        # The key again: nothing is inserted, whatever else would fail.
        assert _insert(conn, user, conversation, inserted[1], "q again", "k") is None
        # Another answer while one streams: the one-streaming index refuses it.
        with pytest.raises(StreamActive):
            _insert(conn, user, conversation, inserted[0], None)
        count = conn.execute(
            "SELECT count(*) FROM messages WHERE conversation_id = %s", (conversation,)
        ).fetchone()[0]
        assert count == 2


def _seq_scanned(plan: Any) -> set[str]:
    node = plan if isinstance(plan, dict) else {}
    found = {node["Relation Name"]} if node.get("Node Type") == "Seq Scan" else set()
    for child in node.get("Plans", []):
        found |= _seq_scanned(child)
    return found


@pytest.mark.parametrize(
    ("query", "params"),
    [
        (history.SELECT_SAID, "leaf"),
        (messages._BRANCH, "leaf"),
        (status.SELECT_STATUS, "conversation"),
    ],
    ids=["prompt", "branch", "status"],
)
def test_a_branch_is_read_by_key_in_a_table_of_thousands(
    conn: psycopg.Connection[Any], query: str, params: str
) -> None:
    """Joined to the walk up the tree, whose length the planner guesses at a hundred, the
    messages of a table of some thousands were hashed whole: a scan per send, per page
    load, per status."""
    user, _ = new_conversation(conn)
    conn.execute(
        "WITH c AS (INSERT INTO conversations (user_id) SELECT %s FROM generate_series(1, 500) "
        "RETURNING id) "
        "INSERT INTO messages (conversation_id, user_id, role, status, content, completed_at) "
        "SELECT c.id, %s, 'user', 'completed', 'x', now() FROM c, generate_series(1, 10)",
        (user, user),
    )
    _, conversation = new_conversation(conn)
    first = _insert(conn, user, conversation, None, "q")
    assert first is not None
    conn.execute("ANALYZE messages")
    values = {"leaf": first[1], "conversation": conversation}
    bound = {"leaf": {"leaf": values["leaf"]}, "conversation": (values["conversation"],)}
    plan = conn.execute("EXPLAIN (FORMAT JSON) " + query, bound[params]).fetchone()[0]
    assert "messages" not in _seq_scanned(plan[0]["Plan"])


def test_a_recently_lent_connection_is_not_checked_again(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn, psycopg.connect(db_url) as other:
        db._check_if_idle(other)  # first lent: checked
        pid = other.info.backend_pid
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        db._check_if_idle(other)  # lent a moment ago: no round trip, so no error
        monkeypatch.setattr(db, "CHECK_AFTER_IDLE_S", 0.0)
        with pytest.raises(psycopg.OperationalError):
            db._check_if_idle(other)  # idle long enough: checked, and found broken


def test_a_lookup_in_autocommit_gives_the_connection_back_as_it_found_it(db_url: str) -> None:
    pool = db.make_pool(db_url, 1)
    rt: Any = SimpleNamespace(pool=pool)
    try:
        with statement(rt) as conn:
            assert conn.autocommit
            pid = conn.info.backend_pid
        with pool.connection() as conn:
            assert not conn.autocommit and conn.info.backend_pid == pid
        # A lookup whose connection broke under it: the pool gets no autocommit connection.
        with pytest.raises(Unavailable), statement(rt) as conn:
            conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        with pool.connection() as conn:
            assert not conn.autocommit and conn.info.backend_pid != pid
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.close()
