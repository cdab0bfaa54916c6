"""The reads a send makes before its model call: what they return, and what they cost."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import gevent
import psycopg
import pytest

from chatsvc.engine import commands, conversations, db, history, limits, messages, status, users
from chatsvc.engine.messages import NewAnswer, NewExchange
from chatsvc.engine.statements import Statement, first_value, nothing, together
from chatsvc.errors import NotFound, StreamActive, Unavailable
from chatsvc.web.context import statement
from tests.support import AppServer, new_conversation, wait_until


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
    new = NewExchange.after(
        conversation, parent, content=content, client_message_id=key, answer=answer
    )
    return (new.question_id, new.answer_id) if messages.insert_exchange(conn, new) else None


def test_a_new_exchange_reads_as_it_will_once_committed(db_url: str) -> None:
    """The send's reads of its new rows skip the assembling reads; they must give what
    the assembling ones give for the same rows."""
    with psycopg.connect(db_url) as conn:
        user, conversation = new_conversation(conn)
        first = _insert(conn, user, conversation, None, "first question")
        assert first is not None
        _finish(conn, first[1], "first answer")
        conn.commit()
        second = _insert(conn, user, conversation, first[1], "second question")
        assert second is not None
        question, answer = second
        new = messages.new_messages_statement([question, answer]).run(conn)
        new_branch = history.said_before_new_statement(question, answer).run(conn)
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


def test_statements_together_run_in_order_each_with_its_own_snapshot(db_url: str) -> None:
    """The send's admission takes the user's lock and then counts in one round trip; the
    count must see what the lock's last holder committed, as if sent on its own."""
    with (
        psycopg.connect(db_url) as holder,
        psycopg.connect(db_url) as waiter,
        psycopg.connect(db_url, autocommit=True) as watcher,
    ):
        user, conversation = new_conversation(holder)
        holder.commit()
        lock, count = limits.count_statements(user)
        lock.run(holder)
        assert _insert(holder, user, conversation, None, "q") is not None  # a streaming answer
        counted = gevent.spawn(together, waiter, lock, count)
        pid = waiter.info.backend_pid
        wait_until(
            "the second connection to wait for the user's lock",
            lambda: watcher.execute(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()[0],
        )
        holder.commit()
        assert counted.get(timeout=10) == [None, 1]


def test_an_error_in_statements_together_stops_the_rest(conn: psycopg.Connection[Any]) -> None:
    user, _ = new_conversation(conn)
    conn.commit()
    rename = "UPDATE users SET name = %s WHERE id = %s"
    first = Statement(rename, ("first", user), nothing)
    failing = Statement("SELECT 1 / %s", (0,), first_value)
    third = Statement(rename, ("third", user), nothing)
    with pytest.raises(psycopg.errors.DivisionByZero):
        together(conn, first, failing, third)
    conn.rollback()
    name = Statement("SELECT name FROM users WHERE id = %s", (user,), first_value)
    assert together(conn, first, name, Statement("SELECT 2", (), first_value)) == [None, "first", 2]


def test_statements_together_are_prepared_once_per_connection(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        user, _ = new_conversation(conn)
        conn.commit()
        usage = users.usage_statement(user)
        first, again = together(conn, usage, usage)
        assert first == again == users.Usage(0, 0, None)
        conn.rollback()  # a prepared statement is the session's, not the transaction's

        def prepared() -> list[Any]:
            return conn.execute(
                "SELECT statement FROM pg_prepared_statements WHERE name LIKE 'chatsvc_%'"
            ).fetchall()

        assert len(prepared()) == 1 and "$1" in prepared()[0][0]
        assert together(conn, usage) == [first]  # preparing it again would fail
        assert len(prepared()) == 1
    with psycopg.connect(db_url) as other:
        assert together(other, usage) == [first]  # another connection prepares its own


def test_a_pooled_connection_keeps_them_across_a_failed_request(db_url: str) -> None:
    """psycopg deallocates every prepared statement of a session at a rollback once it
    has prepared some of its own; a pooled connection must not, or the next send on it
    would find its statements gone."""
    pool = db.make_pool(db_url, 1)
    try:
        with pool.connection() as conn:
            user, _ = new_conversation(conn)
        usage = users.usage_statement(user)
        with pytest.raises(NotFound), pool.connection() as conn:
            assert together(conn, usage) == [users.Usage(0, 0, None)]
            for _ in range(10):  # often enough for psycopg to prepare it, were it on
                usage.run(conn)
            raise NotFound()  # the request fails: the pool rolls back
        with pool.connection() as conn:
            assert together(conn, usage) == [users.Usage(0, 0, None)]
    finally:
        pool.close()


def test_text_bound_on_the_client_arrives_as_written(conn: psycopg.Connection[Any]) -> None:
    """Statements together are bound by psycopg, not by the server: quotes, backslashes,
    placeholders and statement ends in a message are text, not SQL."""
    user, conversation = new_conversation(conn)
    content = "it's \\ %s %(x)s $$ ; DROP TABLE messages; -- \\x00? é 🙂\n'"
    answer = NewAnswer(user, "openai/fake", "test:1", 30.0)
    new = NewExchange.after(
        conversation, None, content=content, client_message_id="'; --", answer=answer
    )
    inserted, rows = together(
        conn,
        messages.exchange_statement(new),
        messages.new_messages_statement([new.question_id, new.answer_id]),
    )
    assert inserted
    assert rows[0].content == content and rows[0].client_message_id == "'; --"
    assert messages.read(conn, [new.question_id])[0].content == content


def test_an_exchange_that_loses_its_key_to_another_changes_nothing(
    app_server: AppServer, db_url: str
) -> None:
    """Sends and edits read an earlier request's exchange under the conversation's lock, so
    the insert cannot find the key taken; were it taken by a writer that held no lock,
    the leaf, the title and the events that named the new rows are undone."""
    with psycopg.connect(db_url) as conn:
        user_id, conversation_id = new_conversation(conn)
        first = _insert(conn, user_id, conversation_id, None, "first", "k")
        assert first is not None
        conn.execute(
            "UPDATE conversations SET current_leaf_id = %s WHERE id = %s",
            (first[1], conversation_id),
        )
        conn.commit()
        user = users.User(
            user_id, "u", is_admin=False, token_limit=None, created_at=datetime.now(UTC)
        )
        conversation = conversations.get(conn, user_id, conversation_id)
        assert conversation is not None and conversation.title == ""
        sent = commands._exchange(
            app_server.runtime,
            conn,
            conversation,
            user,
            first[1],
            content="again",
            client_message_id="k",
            model=None,
            moved=False,
        )
        conn.commit()
        assert not sent.created and sent.branch is None
        assert [sent.exchange.user_message.id, sent.exchange.assistant_message.id] == list(first)
        leaf, title = conn.execute(
            "SELECT current_leaf_id, title FROM conversations WHERE id = %s", (conversation_id,)
        ).fetchone()
        assert (leaf, title) == (first[1], "")
        assert conn.execute(
            "SELECT count(*) FROM messages WHERE conversation_id = %s", (conversation_id,)
        ).fetchone() == (2,)


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
