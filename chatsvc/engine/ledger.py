"""The tool-call ledger: one `tool_calls` row per call, and a call's status as one enum.

A call is recorded `running` in a committed transaction before its request is
sent, and its outcome is committed before the model is called again; the
checkpointer writes these rows (in the transaction that also commits the
answer's text and layout), so one writer owns the answer at a time and every
write is fenced by its epoch. The status of a call and the state of its part
are derived from each other here and in SQL (`chatsvc_tool_part`), nowhere else.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, replace
from typing import Any
from uuid import UUID

from psycopg import Connection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from chatsvc.engine.parts import Entry


class Status(enum.Enum):
    """Where a tool call is: sent and waiting, or its outcome."""

    RUNNING = "running"  # recorded before the request went out; outcome not yet known
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the tool failed, timed out, or the call was refused before sending
    UNKNOWN = "unknown"  # sent, then its owner died or the answer was cancelled


# None: not in the ledger yet. RUNNING → RUNNING is a resend after a takeover.
NEXT: dict[Status | None, frozenset[Status]] = {
    None: frozenset({Status.RUNNING, Status.FAILED}),
    Status.RUNNING: frozenset({Status.RUNNING, Status.SUCCEEDED, Status.FAILED, Status.UNKNOWN}),
    Status.SUCCEEDED: frozenset(),
    Status.FAILED: frozenset(),
    Status.UNKNOWN: frozenset(),
}

UNKNOWN_AFTER_CRASH = (
    "Its outcome is unknown: the process running it stopped, and the tool is not idempotent, "
    "so it was not sent again."
)
CANCELLED = "The answer was cancelled while this call ran; its outcome is unknown."
NOT_SENT_CUT_OFF = (
    "The answer was interrupted while the model wrote this call's arguments; it was not run."
)

NOT_SENT_CANCELLED = "Not run: the answer was cancelled first."
NOT_SENT_FAILED = "Not run: the answer failed first."
ENDED_RUNNING = "The answer ended while this call ran; its outcome is unknown."


class IllegalMove(RuntimeError):
    """A call was asked to move to a status its ledger does not allow from where it is."""


@dataclass(frozen=True)
class Call:
    """A tool call as the ledger holds it."""

    tool_call_id: str
    step: int
    name: str
    arguments: Any  # the JSON object, or None when the model's arguments were not JSON
    idempotency_key: str
    status: Status
    attempts: int = 0
    output: Any = None
    error: str | None = None

    @classmethod
    def refused(cls, message_id: UUID, entry: Entry, arguments: Any, error: str) -> Call:
        """A call never sent: its tool is unknown, or its arguments do not fit."""
        return cls._new(message_id, entry, arguments, Status.FAILED, error=error)

    @classmethod
    def sent(cls, message_id: UUID, entry: Entry, arguments: Any) -> Call:
        """A call about to be sent for the first time."""
        return cls._new(message_id, entry, arguments, Status.RUNNING, attempts=1)

    @classmethod
    def _new(
        cls, message_id: UUID, entry: Entry, arguments: Any, status: Status, **rest: Any
    ) -> Call:
        _check(None, status)
        tool_call_id = entry["tool_call_id"]
        return cls(
            tool_call_id,
            entry["step"],
            entry["name"],
            arguments,
            key(message_id, tool_call_id),
            status,
            **rest,
        )

    def move(self, to: Status, *, output: Any = None, error: str | None = None) -> Call:
        """The call in status `to` (a resend counts one more attempt), or IllegalMove."""
        _check(self.status, to)
        attempts = self.attempts + 1 if to is Status.RUNNING else self.attempts
        return replace(self, status=to, attempts=attempts, output=output, error=error)

    @property
    def done(self) -> bool:
        """Whether its outcome is committed (it is never sent again)."""
        return self.status is not Status.RUNNING


def _check(now: Status | None, to: Status) -> None:
    if to not in NEXT[now]:
        raise IllegalMove(f"tool call: {now.name if now else 'new'} → {to.name}")


def storable(value: Any) -> bool:
    """Whether a value is plain JSON that jsonb accepts (no NaN, no Python objects).

    Checked before a value enters the ledger: a row the database refuses would
    stop the checkpointer, which commits every answer of the process.
    """
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return "\\u0000" not in json.dumps(value)  # jsonb refuses the NUL character


def key(message_id: UUID, tool_call_id: str) -> str:
    """The Idempotency-Key of a call: the same for every attempt, different for any two calls."""
    return f"chatsvc:{message_id}:{tool_call_id}"


def state(entry: Entry, call: Call | None) -> str:
    """The state of a tool part (as `chatsvc_tool_part` derives it in SQL)."""
    if call is not None and call.status is Status.SUCCEEDED:
        return "output-available"
    if call is not None and call.status in (Status.FAILED, Status.UNKNOWN):
        return "output-error"
    if call is not None or entry["complete"]:
        return "input-available"
    return "input-streaming"


def part(entry: Entry, call: Call | None) -> dict[str, Any]:
    """A tool part as the API shows it."""
    shown: dict[str, Any] = {
        "type": "tool",
        "tool_call_id": entry["tool_call_id"],
        "name": entry["name"],
        "input": call.arguments
        if call is not None and call.arguments is not None
        else entry["input_text"],
        "state": state(entry, call),
    }
    if call is not None and call.status is Status.SUCCEEDED:
        shown["output"] = call.output
    elif call is not None and call.error is not None and call.done:
        shown["error"] = call.error
    return shown


# Fenced: the row is written only while `epoch` owns the streaming answer. The
# checkpointer runs it after the checkpoint statement of the same transaction,
# which already holds the answer's row lock.
UPSERT = """
INSERT INTO tool_calls AS t (message_id, tool_call_id, step, name, arguments, status,
                             idempotency_key, output, error, epoch, attempts, finished_at)
SELECT m.id, %(tool_call_id)s, %(step)s, %(name)s, %(arguments)s, %(status)s, %(key)s,
       %(output)s, %(error)s, m.epoch, %(attempts)s,
       CASE WHEN %(status)s = 'running' THEN NULL ELSE clock_timestamp() END
FROM messages m
WHERE m.id = %(message_id)s AND m.epoch = %(epoch)s AND m.status = 'streaming'
ON CONFLICT (message_id, tool_call_id) DO UPDATE
SET status = EXCLUDED.status, arguments = EXCLUDED.arguments, output = EXCLUDED.output,
    error = EXCLUDED.error, epoch = EXCLUDED.epoch, attempts = EXCLUDED.attempts,
    finished_at = EXCLUDED.finished_at
"""


def write(conn: Connection[Any], message_id: UUID, epoch: int, calls: list[Call]) -> None:
    """Record the calls as they are now (the caller's transaction, fenced by `epoch`)."""
    for call in calls:
        conn.execute(
            UPSERT,
            {
                "message_id": message_id,
                "epoch": epoch,
                "tool_call_id": call.tool_call_id,
                "step": call.step,
                "name": call.name,
                "arguments": None if call.arguments is None else Jsonb(call.arguments),
                "status": call.status.value,
                "key": call.idempotency_key,
                "output": Jsonb(call.output) if call.status is Status.SUCCEEDED else None,
                "error": None if call.error is None else call.error.replace("\x00", ""),
                "attempts": call.attempts,
            },
        )


# The calls an ending answer leaves running (its owner lost them, or an
# interrupted takeover never ran them) end `unknown`, so its parts are final.
ABANDON = """
UPDATE tool_calls t SET status = 'unknown', error = %(error)s, finished_at = clock_timestamp()
FROM messages m
WHERE t.message_id = m.id AND t.status = 'running'
  AND m.id = %(id)s AND m.epoch = %(epoch)s AND m.status = 'streaming'
"""


def abandon(conn: Connection[Any], message_id: UUID, epoch: int, error: str) -> None:
    """End the answer's running calls `unknown` (the caller's transaction, fenced)."""
    conn.execute(ABANDON, {"id": message_id, "epoch": epoch, "error": error})


SELECT_CALLS = """
SELECT tool_call_id, step, name, arguments, idempotency_key, status, attempts, output, error
FROM tool_calls WHERE message_id = %s ORDER BY step, started_at, tool_call_id
"""


def read(conn: Connection[Any], message_id: UUID) -> dict[str, Call]:
    """The ledger of an answer, by tool_call_id (for the process that takes it over)."""
    rows = conn.cursor(row_factory=dict_row).execute(SELECT_CALLS, (message_id,)).fetchall()
    return {row["tool_call_id"]: Call(**{**row, "status": Status(row["status"])}) for row in rows}
