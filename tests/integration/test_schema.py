"""Migrations: applied once, idempotent, concurrent-safe, and giving the documented schema."""

from __future__ import annotations

from typing import Any

import gevent
import psycopg
import pytest

from chatsvc.engine import events, migrations
from tests.conftest import database_url, drop_database
from tests.support import new_conversation

SCHEMA_QUERY = """
SELECT table_name, column_name, data_type, is_nullable, column_default
FROM information_schema.columns WHERE table_schema = 'public'
ORDER BY table_name, ordinal_position
"""
MIGRATIONS = [
    "0001.initial",
    "0002.parts-and-tools",
    "0003.tree",
    "0004.users-disable",
    "0005.chat-keys",
    "0006.chunk-batches",
    "0007.usage-pending",
    "0008.text-parts",
]
INDEX_QUERY = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"


def _schema(url: str) -> tuple[list[Any], list[Any]]:
    with psycopg.connect(url) as conn:
        return conn.execute(SCHEMA_QUERY).fetchall(), conn.execute(INDEX_QUERY).fetchall()


@pytest.fixture
def empty_db(pg_server: str) -> Any:
    name = "chatsvc_empty_" + str(id(object()))
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield database_url(pg_server, name)
    drop_database(pg_server, name)


def test_upgrade_twice_is_a_noop_the_second_time(empty_db: str) -> None:
    assert migrations.upgrade(empty_db) == MIGRATIONS
    first = _schema(empty_db)
    assert migrations.upgrade(empty_db) == []
    assert _schema(empty_db) == first
    assert [(m.id, m.applied) for m in migrations.status(empty_db)] == [
        (m, True) for m in MIGRATIONS
    ]


def test_concurrent_upgrades_apply_each_migration_once(empty_db: str) -> None:
    results = [gevent.spawn(migrations.upgrade, empty_db) for _ in range(4)]
    gevent.joinall(results, raise_error=True)
    applied = [r.value for r in results]
    assert sorted(applied, key=len) == [[], [], [], MIGRATIONS]
    with psycopg.connect(empty_db) as conn:
        assert migrations.pending(conn) == []


def test_pending_lists_unapplied_migrations(empty_db: str) -> None:
    with psycopg.connect(empty_db) as conn:
        assert migrations.pending(conn) == MIGRATIONS


def _columns(conn: psycopg.Connection[Any], table: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,)
    ).fetchall()
    return {r[0] for r in rows}


def test_schema_has_what_the_spec_documents(conn: psycopg.Connection[Any]) -> None:
    for table in (
        "users",
        "api_tokens",
        "projects",
        "project_members",
        "conversations",
        "messages",
        "message_chunks",
        "llm_calls",
        "sessions",
    ):
        assert _columns(conn, table), f"missing table {table}"
    assert {
        "id",
        "conversation_id",
        "role",
        "status",
        "content",
        "epoch",
        "owner",
        "lease_expires_at",
        "cancel_requested_at",
        "client_message_id",
        "usage",
        "model",
        "error",
        "created_at",
        "completed_at",
        "resume_count",
        "content_length",
    } <= _columns(conn, "messages")
    assert {
        "message_id",
        "conversation_id",
        "owner",
        "epoch",
        "started_at",
        "last_checkpoint_at",
        "lease_expires_at",
        "content",
        "content_length",
        "age",
    } <= _columns(conn, "active_streams")
    assert {"conversation_id", "is_streaming", "active_message_id"} <= _columns(
        conn, "conversation_status"
    )
    assert "token_hash" in _columns(conn, "api_tokens")
    assert "token" not in _columns(conn, "api_tokens")
    indexes = dict(conn.execute(INDEX_QUERY).fetchall())
    assert (
        "WHERE (status = 'streaming'::text)" in indexes["messages_one_streaming_per_conversation"]
    )
    assert "UNIQUE" in indexes["messages_client_message_id"]


def _count(conn: psycopg.Connection[Any], housekeeping: str) -> int:
    """The count one of chatsvc's housekeeping functions returns."""
    row = conn.execute(housekeeping).fetchone()
    assert row is not None
    return int(row[0])


def _streaming_answer(conn: psycopg.Connection[Any]) -> tuple[Any, Any]:
    _, conversation = new_conversation(conn)
    message = conn.execute(
        "INSERT INTO messages (conversation_id, role, status) VALUES (%s, 'assistant', "
        "'streaming') RETURNING id",
        (conversation,),
    ).fetchone()[0]
    return conversation, message


def test_database_allows_one_streaming_answer_per_conversation(
    conn: psycopg.Connection[Any],
) -> None:
    _, conversation = new_conversation(conn)
    insert = (
        "INSERT INTO messages (conversation_id, role, status) VALUES (%s, 'assistant', 'streaming')"
    )
    conn.execute(insert, (conversation,))
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(insert, (conversation,))


def test_client_message_id_is_unique_per_conversation(conn: psycopg.Connection[Any]) -> None:
    _, conversation = new_conversation(conn)
    insert = (
        "INSERT INTO messages (conversation_id, role, status, client_message_id, "
        "completed_at) VALUES (%s, 'user', 'completed', 'abc', now())"
    )
    conn.execute(insert, (conversation,))
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(insert, (conversation,))


def test_psql_cancel_update_notifies_the_owner(conn: psycopg.Connection[Any], db_url: str) -> None:
    conversation, message = _streaming_answer(conn)
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN chatsvc")
        conn.execute("UPDATE messages SET cancel_requested_at = now() WHERE id = %s", (message,))
        notices = list(listener.notifies(timeout=2, stop_after=1))
    assert len(notices) == 1
    # The one producer of events written in a migration: it speaks events.py's format.
    assert events.decode(notices[0].payload) == [events.CancelRequested(conversation, message)]


def test_the_sweep_deletes_the_chunks_no_streaming_answer_reads(
    conn: psycopg.Connection[Any],
) -> None:
    def chunk(message: Any, text: str) -> None:
        conn.execute(
            "INSERT INTO message_chunks (message_id, start_offset, epoch, content) "
            "VALUES (%s, 0, 1, %s)",
            (message, text),
        )

    def sweep() -> int:
        return _count(conn, "SELECT chatsvc_sweep_chunks()")

    def chunks() -> list[tuple[Any, str]]:
        return conn.execute("SELECT message_id, content FROM message_chunks").fetchall()

    first_conversation, first = _streaming_answer(conn)
    chunk(first, "first")
    _, second = _streaming_answer(conn)  # its chunks come after the first's
    chunk(second, "second")
    assert sweep() == 0, "both answers stream: every batch is read"
    assert conn.execute(
        "SELECT message_text(m) FROM messages m WHERE id = ANY(%s) ORDER BY m.seq",
        ([first, second],),
    ).fetchall() == [("first",), ("second",)]
    # Deleting a streaming answer leaves its chunks to the sweep.
    conn.execute("DELETE FROM conversations WHERE id = %s", (first_conversation,))
    assert sweep() == 1
    assert chunks() == [(second, "second")]
    # Once no answer streams, no batch is kept.
    conn.execute(
        "UPDATE messages SET status = 'completed', completed_at = now() WHERE id = %s", (second,)
    )
    assert sweep() == 1
    assert chunks() == []


METER = (
    "INSERT INTO llm_calls (user_id, epoch, model, prompt_tokens, completion_tokens) "
    "VALUES (%s, 1, 'm', %s, %s)"
)
USAGE = "SELECT prompt_tokens, completion_tokens, total_tokens FROM user_usage WHERE user_id = %s"
TOTALS = "SELECT prompt_tokens, completion_tokens FROM users WHERE id = %s"


def _count_usage(conn: psycopg.Connection[Any]) -> int:
    return _count(conn, "SELECT chatsvc_count_usage()")


def test_metering_a_call_leaves_the_users_row_unlocked(
    conn: psycopg.Connection[Any], db_url: str
) -> None:
    user, _ = new_conversation(conn)
    with psycopg.connect(db_url) as metering:
        metering.execute(METER, (user, 10, 5))
        # The checkpointer's transaction is still open: another may write the row
        # (an admin's limit, another instance's metering) without waiting.
        conn.execute("SELECT 1 FROM users WHERE id = %s FOR NO KEY UPDATE NOWAIT", (user,))
        assert conn.execute(USAGE, (user,)).fetchone() == (0, 0, 0), "not committed yet"
    assert conn.execute(USAGE, (user,)).fetchone() == (10, 5, 15)


def test_the_roll_up_counts_each_call_once(conn: psycopg.Connection[Any], db_url: str) -> None:
    user, _ = new_conversation(conn)
    other, _ = new_conversation(conn)
    for prompt, completion in ((10, 5), (7, 0)):
        conn.execute(METER, (user, prompt, completion))
    conn.execute(METER, (other, 1, 2))
    conn.execute(METER, (None, 100, 100))  # a call whose user is gone counts for no one
    assert conn.execute(TOTALS, (user,)).fetchone() == (0, 0)
    assert conn.execute(USAGE, (user,)).fetchone() == (17, 5, 22)
    with psycopg.connect(db_url) as rolling:
        assert _count_usage(rolling) == 3
        # A roll-up in progress elsewhere: this one yields at once, and the view
        # reads the totals as they were, pending rows included.
        assert _count_usage(conn) == 0
        assert conn.execute(USAGE, (user,)).fetchone() == (17, 5, 22)
    assert conn.execute(TOTALS, (user,)).fetchone() == (17, 5)
    assert conn.execute(TOTALS, (other,)).fetchone() == (1, 2)
    assert conn.execute(USAGE, (user,)).fetchone() == (17, 5, 22)
    assert _count_usage(conn) == 0, "nothing left pending"
    conn.execute(METER, (user, 1, 1))
    assert conn.execute(USAGE, (user,)).fetchone() == (18, 6, 24)
    assert conn.execute("SELECT count(*) FROM usage_pending").fetchone() == (1,)


def test_totals_metered_before_the_upgrade_stay(empty_db: str) -> None:
    migrations.upgrade(empty_db, until="0006.chunk-batches")
    with psycopg.connect(empty_db) as conn:
        user, _ = new_conversation(conn)
        conn.execute(METER, (user, 10, 5))
    assert migrations.upgrade(empty_db) == MIGRATIONS[6:]
    with psycopg.connect(empty_db) as conn:
        assert conn.execute(TOTALS, (user,)).fetchone() == (10, 5)
        conn.execute(METER, (user, 1, 1))
        assert conn.execute(USAGE, (user,)).fetchone() == (11, 6, 17)
        assert conn.execute(TOTALS, (user,)).fetchone() == (10, 5)


def test_existing_conversations_become_one_branch(empty_db: str) -> None:
    assert migrations.upgrade(empty_db, until="0002.parts-and-tools")[-1] == "0002.parts-and-tools"
    with psycopg.connect(empty_db) as conn:
        user = conn.execute("INSERT INTO users (name) VALUES ('old') RETURNING id").fetchone()
        assert user is not None
        lines = []
        for _ in range(2):
            row = conn.execute(
                "INSERT INTO conversations (user_id) VALUES (%s) RETURNING id", user
            ).fetchone()
            assert row is not None
            ids = []
            for n in range(4):
                role = "user" if n % 2 == 0 else "assistant"
                ids += (
                    conn.execute(
                        "INSERT INTO messages (conversation_id, role, status, content, "
                        "completed_at) VALUES (%s, %s, 'completed', %s, now()) RETURNING id",
                        (row[0], role, f"m{n}"),
                    ).fetchone()
                    or ()
                )
            lines.append((row[0], ids))
    assert migrations.upgrade(empty_db) == MIGRATIONS[2:]
    with psycopg.connect(empty_db) as conn:
        for conversation, ids in lines:
            parents = dict(
                conn.execute(
                    "SELECT id, parent_id FROM messages WHERE conversation_id = %s", (conversation,)
                ).fetchall()
            )
            assert parents == dict(zip(ids, [None, *ids[:-1]], strict=True))
            leaf = conn.execute(
                "SELECT current_leaf_id FROM conversations WHERE id = %s", (conversation,)
            ).fetchone()
            assert leaf == (ids[-1],)
            branch = conn.execute(
                "SELECT id FROM conversation_branch(%s)", (conversation,)
            ).fetchall()
            assert [row[0] for row in branch] == ids


def test_answers_streaming_across_the_upgrade_keep_their_chunks(empty_db: str) -> None:
    assert migrations.upgrade(empty_db, until="0005.chat-keys")[-1] == "0005.chat-keys"
    with psycopg.connect(empty_db) as conn:
        _, conversation = new_conversation(conn)
        answer = conn.execute(
            "INSERT INTO messages (conversation_id, role, status, content_length, "
            "reasoning_length) VALUES (%s, 'assistant', 'streaming', 9, 2) RETURNING id",
            (conversation,),
        ).fetchone()[0]  # type: ignore[index]
        for kind, start, text in (
            ("text", 0, "Hello "),
            ("text", 6, "wör"),
            ("reasoning", 0, "hm"),
        ):
            conn.execute(
                "INSERT INTO message_chunks (message_id, kind, start_offset, epoch, content) "
                "VALUES (%s, %s, %s, 1, %s)",
                (answer, kind, start, text),
            )
    assert migrations.upgrade(empty_db) == MIGRATIONS[5:]
    with psycopg.connect(empty_db) as conn:
        row = conn.execute(
            "SELECT message_text(m), message_committed(m, 'text'), "
            "message_committed(m, 'reasoning'), m.batches_from FROM messages m WHERE id = %s",
            (answer,),
        ).fetchone()
        assert row == ("Hello wör", 9, 2, None)  # NULL: its chunks are read from the start
        assert conn.execute("SELECT count(*) FROM chunk_batches").fetchone() == (3,)
        # It streams: the sweep keeps its batches.
        assert conn.execute("SELECT chatsvc_sweep_chunks()").fetchone() == (0,)
