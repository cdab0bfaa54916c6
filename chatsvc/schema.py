"""chatsvc's tables as SQLAlchemy Core metadata, for joins and for queries composed at run time.

The migrations in `sql/migrations` are what creates the schema; this module
describes what they create, and `tests/integration/test_schema_metadata.py`
proves the two agree (columns, types, nullability, defaults, keys, indexes and
checks). It imports SQLAlchemy alone, so it is usable without a database and
without the rest of chatsvc. How to use it: docs/integrating.md.

`metadata` holds the tables; `views` holds the read-only views `active_streams`,
`message_chunks`, `conversation_status` and `user_usage`, kept apart so that
`metadata.create_all()` never makes tables of them.
"""

from __future__ import annotations

from sqlalchemy import (
    DDL,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Interval,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    Uuid,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

__all__ = [
    "active_streams",
    "api_tokens",
    "chunk_batches",
    "conversation_status",
    "conversations",
    "llm_calls",
    "message_chunks",
    "messages",
    "metadata",
    "project_members",
    "projects",
    "sessions",
    "tool_calls",
    "usage_pending",
    "user_usage",
    "users",
    "views",
]

metadata = MetaData()
"""Every table of chatsvc's schema."""

# The default of messages.batches_from, as migration 0006 defines it (plpgsql: its
# body is checked when called, so it can exist before chunk_batches does).
event.listen(
    metadata,
    "before_create",
    DDL(  # type: ignore[no-untyped-call]  # SQLAlchemy's DDL() has no annotations
        "CREATE OR REPLACE FUNCTION chatsvc_batches_now() RETURNS bigint "
        "LANGUAGE plpgsql STABLE AS $$ BEGIN "
        "RETURN (SELECT coalesce(max(id), 0) + 1 FROM chunk_batches); END $$"
    ),
)

views = MetaData()
"""The read-only views, described as tables so that queries can select from them."""

_UUID = Uuid(as_uuid=True)
_TIMESTAMPTZ = DateTime(timezone=True)
_NEW_ID = text("gen_random_uuid()")
_NOW = text("now()")
_CLOCK = text("clock_timestamp()")  # distinct times within one transaction, for ordering


def _id() -> Column[object]:
    return Column("id", _UUID, primary_key=True, server_default=_NEW_ID)


users = Table(
    "users",
    metadata,
    _id(),
    Column("name", Text, nullable=False, unique=True),
    Column("is_admin", Boolean, nullable=False, server_default=text("false")),
    Column("token_limit", BigInteger),
    # Totals of llm_calls, rolled up from usage_pending (read user_usage for now's).
    Column("prompt_tokens", BigInteger, nullable=False, server_default=text("0")),
    Column("completion_tokens", BigInteger, nullable=False, server_default=text("0")),
    Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=_NOW),
    # Set by `chatsvc users disable`: the user's tokens and sessions stop working.
    Column("disabled_at", _TIMESTAMPTZ),
    CheckConstraint("name ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$'"),
    CheckConstraint("token_limit >= 0"),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    _id(),
    Column("user_id", _UUID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("token_hash", LargeBinary, nullable=False, unique=True),  # SHA-256 of the token
    Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=_NOW),
)

sessions = Table(
    "sessions",
    metadata,
    Column("secret_hash", LargeBinary, primary_key=True),  # SHA-256 of the cookie's secret
    Column("user_id", _UUID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("token_id", _UUID, ForeignKey("api_tokens.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=_NOW),
    Column("expires_at", _TIMESTAMPTZ, nullable=False),
)

projects = Table(
    "projects",
    metadata,
    _id(),
    Column("name", Text, nullable=False),
    Column("created_by", _UUID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=_CLOCK),
    CheckConstraint("char_length(name) BETWEEN 1 AND 200"),
)

project_members = Table(
    "project_members",
    metadata,
    Column("project_id", _UUID, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", _UUID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("added_at", _TIMESTAMPTZ, nullable=False, server_default=_NOW),
    PrimaryKeyConstraint("project_id", "user_id"),
    Index("project_members_user", "user_id"),
)

# The chat ids of the AI SDK transport that are not a conversation's UUID: a
# caller's key naming the private conversation its first POST /api/chat created.
chat_keys = Table(
    "chat_keys",
    metadata,
    Column("user_id", _UUID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("key", Text, nullable=False),
    Column(
        "conversation_id",
        _UUID,
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
        unique=True,
    ),
    Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=_NOW),
    PrimaryKeyConstraint("user_id", "key"),
    CheckConstraint("char_length(key) BETWEEN 1 AND 200"),
)

conversations = Table(
    "conversations",
    metadata,
    _id(),
    Column("user_id", _UUID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # NULL: private to its creator; else visible to every member of the project.
    Column("project_id", _UUID, ForeignKey("projects.id", ondelete="CASCADE")),
    Column("title", Text, nullable=False, server_default=text("''")),
    Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=_CLOCK),
    # The last message of the branch the conversation shows (no foreign key: its
    # check would lock the message row).
    Column("current_leaf_id", _UUID),
    CheckConstraint("char_length(title) <= 200"),
)
Index(
    "conversations_user_recent",
    conversations.c.user_id,
    conversations.c.created_at.desc(),
    conversations.c.id.desc(),
)
Index(
    "conversations_project_recent",
    conversations.c.project_id,
    conversations.c.created_at.desc(),
    conversations.c.id.desc(),
    postgresql_where=conversations.c.project_id.is_not(None),
)

messages = Table(
    "messages",
    metadata,
    _id(),
    Column(
        "conversation_id",
        _UUID,
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("seq", BigInteger, Identity(always=True), nullable=False),  # order of creation
    Column("user_id", _UUID, ForeignKey("users.id", ondelete="SET NULL")),
    Column("reply_to", _UUID, ForeignKey("messages.id", ondelete="CASCADE")),
    # Incremented by every takeover; every write of a streaming answer is fenced by it.
    Column("epoch", Integer, nullable=False, server_default=text("0")),
    Column("resume_count", Integer, nullable=False, server_default=text("0")),
    # Committed text so far, in code points (the text itself is in message_chunks
    # while the answer streams, in `content` once it ended).
    Column("content_length", Integer, nullable=False, server_default=text("0")),
    Column("last_checkpoint_at", _TIMESTAMPTZ),
    Column("lease_expires_at", _TIMESTAMPTZ),
    Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=_CLOCK),
    Column("completed_at", _TIMESTAMPTZ),
    # Set (by the API or an UPDATE in psql) to stop a streaming answer.
    Column("cancel_requested_at", _TIMESTAMPTZ),
    Column("role", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("owner", Text),  # the process writing a streaming answer
    Column("model", Text),
    Column("client_message_id", Text),
    Column("usage", JSONB),
    Column("error", Text),
    Column("content", Text, nullable=False, server_default=text("''")),
    Column("reasoning_length", Integer, nullable=False, server_default=text("0")),
    Column("tool_version", Integer, nullable=False, server_default=text("0")),
    Column("step", Integer, nullable=False, server_default=text("0")),
    Column("layout", JSONB),  # the order of a streaming answer's parts
    # A finished answer's parts, as the API returns them; NULL for text alone
    # (its content is its one part: message_parts(m) reads both forms).
    Column("parts", JSONB),
    # The message this one follows (NULL for a first message); messages with the
    # same parent are versions of one another.
    Column("parent_id", _UUID, ForeignKey("messages.id", ondelete="CASCADE")),
    # Every chunk of a streaming answer is in a chunk_batches row with an id at
    # least this (NULL: from the start).
    Column("batches_from", BigInteger, server_default=text("chatsvc_batches_now()")),
    CheckConstraint("role IN ('user', 'assistant')"),
    CheckConstraint("status IN ('streaming', 'completed', 'cancelled', 'failed', 'interrupted')"),
    CheckConstraint("char_length(client_message_id) BETWEEN 1 AND 200"),
    CheckConstraint(
        "(status = 'streaming') = (completed_at IS NULL)",
        name="messages_terminal_has_completed_at",
    ),
    CheckConstraint(
        "role = 'assistant' OR status <> 'streaming'", name="messages_only_answers_stream"
    ),
)
Index(
    "messages_one_streaming_per_conversation",
    messages.c.conversation_id,
    unique=True,
    postgresql_where=messages.c.status == "streaming",
)
Index(
    "messages_client_message_id",
    messages.c.conversation_id,
    messages.c.client_message_id,
    unique=True,
    postgresql_where=messages.c.client_message_id.is_not(None),
)
Index("messages_conversation_order", messages.c.conversation_id, messages.c.seq)
Index(
    "messages_reply_to",
    messages.c.reply_to,
    postgresql_where=messages.c.reply_to.is_not(None),
)
Index(
    "messages_children",
    messages.c.parent_id,
    messages.c.seq,
    postgresql_where=messages.c.parent_id.is_not(None),
)
Index(
    "messages_first",
    messages.c.conversation_id,
    messages.c.seq,
    postgresql_where=messages.c.parent_id.is_(None),
)
# A user's streaming answers, counted against CHATSVC_MAX_ACTIVE_PER_USER.
Index(
    "messages_streaming_by_user",
    messages.c.user_id,
    postgresql_where=messages.c.status == "streaming",
)

# The text (and reasoning) of streaming answers: each checkpoint transaction
# appends one row holding the new text of all its answers, entry i of the arrays
# being one chunk (read them through the message_chunks view). No foreign key to
# messages: its check would lock the message rows at every checkpoint.
chunk_batches = Table(
    "chunk_batches",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("message_ids", ARRAY(_UUID), nullable=False),
    Column("kinds", ARRAY(Text), nullable=False),
    Column("starts", ARRAY(Integer), nullable=False),
    Column("epochs", ARRAY(Integer), nullable=False),
    Column("texts", ARRAY(Text), nullable=False),
    Column("written_at", _TIMESTAMPTZ, nullable=False, server_default=_NOW),
    postgresql_with={"toast_tuple_target": "8160"},
)

# One row per model call: what a user's token totals are made of.
llm_calls = Table(
    "llm_calls",
    metadata,
    _id(),
    Column("message_id", _UUID, ForeignKey("messages.id", ondelete="SET NULL")),
    Column("user_id", _UUID, ForeignKey("users.id", ondelete="CASCADE")),
    Column("epoch", Integer, nullable=False),
    Column("model", Text, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("estimated", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=_NOW),
    Column("step", Integer, nullable=False, server_default=text("0")),
    CheckConstraint("prompt_tokens >= 0"),
    CheckConstraint("completion_tokens >= 0"),
    Index("llm_calls_user", "user_id"),
    Index("llm_calls_message", "message_id"),
)

# The tokens of LLM calls not yet added to their user's totals (a trigger on
# llm_calls inserts here; chatsvc_count_usage() moves them into users).
usage_pending = Table(
    "usage_pending",
    metadata,
    Column("user_id", _UUID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Index("usage_pending_user", "user_id"),
)

# The tool-call ledger: one row per tool call, recorded `running` before it is sent.
tool_calls = Table(
    "tool_calls",
    metadata,
    Column(
        "message_id",
        _UUID,
        ForeignKey("messages.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("tool_call_id", Text, nullable=False),
    Column("step", Integer, nullable=False),
    Column("name", Text, nullable=False),
    Column("arguments", JSONB),  # NULL when the model's arguments were not valid JSON
    Column("status", Text, nullable=False),
    Column("idempotency_key", Text, nullable=False, unique=True),
    Column("output", JSONB),
    Column("error", Text),
    Column("epoch", Integer, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("started_at", _TIMESTAMPTZ, nullable=False, server_default=_CLOCK),
    Column("finished_at", _TIMESTAMPTZ),
    PrimaryKeyConstraint("message_id", "tool_call_id"),
    CheckConstraint("status IN ('running', 'succeeded', 'failed', 'unknown')"),
    CheckConstraint("(status = 'running') = (finished_at IS NULL)", name="tool_calls_finished"),
)

active_streams = Table(
    "active_streams",
    views,
    Column("message_id", _UUID, primary_key=True),
    Column("conversation_id", _UUID),
    Column("owner", Text),
    Column("epoch", Integer),
    Column("started_at", _TIMESTAMPTZ),
    Column("last_checkpoint_at", _TIMESTAMPTZ),
    Column("lease_expires_at", _TIMESTAMPTZ),
    Column("content", Text),  # the text committed so far
    Column("content_length", Integer),
    Column("age", Interval),
    Column("cancel_requested_at", _TIMESTAMPTZ),
    Column("resume_count", Integer),
    Column("model", Text),
    Column("reasoning_length", Integer),
    Column("parts", JSONB),
    info={"view": True},
)
"""One row per streaming answer (a view: read it, never write it)."""

message_chunks = Table(
    "message_chunks",
    views,
    Column("message_id", _UUID),
    Column("start_offset", Integer),
    Column("epoch", Integer),
    Column("content", Text),
    Column("kind", Text),
    Column("batch_id", BigInteger),
    info={"view": True},
)
"""One row per chunk of a streaming answer's text or reasoning, from chunk_batches (a view:
restrict `batch_id` to at least the answer's `batches_from`, or it reads every batch)."""

user_usage = Table(
    "user_usage",
    views,
    Column("user_id", _UUID, primary_key=True),
    Column("name", Text),
    Column("prompt_tokens", BigInteger),
    Column("completion_tokens", BigInteger),
    Column("total_tokens", BigInteger),
    Column("token_limit", BigInteger),
    info={"view": True},
)
"""One row per user: the tokens they used up to now, and their limit (a view)."""

conversation_status = Table(
    "conversation_status",
    views,
    Column("conversation_id", _UUID, primary_key=True),
    Column("is_streaming", Boolean),
    Column("active_message_id", _UUID),
    Column("content_length", Integer),
    Column("epoch", Integer),
    Column("owner", Text),
    Column("lease_expires_at", _TIMESTAMPTZ),
    info={"view": True},
)
"""One row per conversation: whether an answer streams in it (a view)."""
