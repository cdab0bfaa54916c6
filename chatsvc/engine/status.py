"""What is streaming right now, read from the psql views (any process, any time)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from psycopg import Connection
from psycopg.rows import class_row

from chatsvc.engine.conversations import VISIBLE_TO


@dataclass(frozen=True)
class ActiveStream:
    """One row of the active_streams view."""

    message_id: UUID
    conversation_id: UUID
    owner: str | None
    epoch: int
    started_at: datetime
    last_checkpoint_at: datetime | None
    lease_expires_at: datetime | None
    content_length: int
    age: timedelta
    cancel_requested_at: datetime | None
    resume_count: int
    model: str | None

    @property
    def age_s(self) -> float:
        """Seconds since the answer started, to the millisecond."""
        return round(self.age.total_seconds(), 3)

    @property
    def cancel_requested(self) -> bool:
        """Whether someone asked for the answer to stop."""
        return self.cancel_requested_at is not None


@dataclass(frozen=True)
class ConversationStatus:
    """The body of GET /api/conversations/{id}/status."""

    conversation_id: UUID
    is_streaming: bool
    active_message_id: UUID | None
    message_id: UUID | None
    status: str | None
    content_length: int
    epoch: int | None
    started_at: datetime | None
    last_checkpoint_at: datetime | None
    lease_expires_at: datetime | None


_STREAM_COLUMNS = """s.message_id, s.conversation_id, s.owner, s.epoch, s.started_at,
    s.last_checkpoint_at, s.lease_expires_at, s.content_length, s.age, s.cancel_requested_at,
    s.resume_count, s.model"""

SELECT_VISIBLE_STREAMS = f"""
SELECT {_STREAM_COLUMNS} FROM active_streams s JOIN conversations c ON c.id = s.conversation_id
WHERE %(all)s OR {VISIBLE_TO}
ORDER BY s.started_at
"""


def active(conn: Connection[Any], user_id: UUID | None, *, everything: bool) -> list[ActiveStream]:
    """Streams the user may see, or every stream when `everything` (admins, the CLI)."""
    cur = conn.cursor(row_factory=class_row(ActiveStream))
    return cur.execute(SELECT_VISIBLE_STREAMS, {"all": everything, "user": user_id}).fetchall()


# The latest answer of the conversation's current branch, streaming or ended (an
# answer streams only on the current branch).
SELECT_STATUS = """
SELECT cs.conversation_id, cs.is_streaming, cs.active_message_id,
       m.id AS message_id, m.status,
       CASE WHEN m.id IS NULL THEN 0 ELSE message_committed(m, 'text') END AS content_length,
       m.epoch, m.created_at AS started_at,
       CASE WHEN m.id IS NOT NULL THEN message_checkpointed_at(m) END AS last_checkpoint_at,
       m.lease_expires_at
FROM conversation_status cs
LEFT JOIN LATERAL (
    SELECT b.id
    FROM message_branch((SELECT c.current_leaf_id FROM conversations c
                         WHERE c.id = cs.conversation_id)) b
    -- Each message by its key (see messages._BRANCH for why OFFSET 0).
    CROSS JOIN LATERAL (SELECT p.role FROM messages p WHERE p.id = b.id OFFSET 0) p
    WHERE p.role = 'assistant'
    ORDER BY b.depth LIMIT 1
) latest ON true
LEFT JOIN messages m ON m.id = latest.id
WHERE cs.conversation_id = %s
"""


def conversation_status(conn: Connection[Any], conversation_id: UUID) -> ConversationStatus | None:
    """Whether a conversation is streaming, and the state of its latest answer."""
    cur = conn.cursor(row_factory=class_row(ConversationStatus))
    return cur.execute(SELECT_STATUS, (conversation_id,)).fetchone()
