"""A stream: an answer this process owns, and its lifecycle as one state with legal transitions.

```
RUNNING ─► CANCELLING ─► ENDING ─► ENDED     the greenlet (or the reaper) hands over its Ending
   │            │          ▲
   ├────────────┼──────────┘
   └────────────┴─► RELEASING ─► RELEASED    shutdown: text committed, owner and lease cleared
any state but a final one ─► LOST            fenced: the database says another process owns it
```

Only the checkpointer moves a stream to ENDED, RELEASED or LOST, after its
commit says so; `ended` wakes whoever waits for one of those final states.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from uuid import UUID

import gevent
import gevent.event

from chatsvc.engine import events, ledger
from chatsvc.engine.ledger import Call
from chatsvc.engine.messages import Message
from chatsvc.engine.parts import Entry, Layout


class Cancelled(Exception):
    """Thrown into an answer greenlet when its answer is cancelled."""


class IllegalTransition(RuntimeError):
    """A stream was asked to move to a state its lifecycle does not allow from where it is."""


class State(enum.Enum):
    """Where a stream is in its lifecycle."""

    RUNNING = "running"  # generating; its text is checkpointed as it comes
    CANCELLING = "cancelling"  # asked to stop; its greenlet is about to end it `cancelled`
    RELEASING = "releasing"  # shutting down: commit its text, then hand it over
    ENDING = "ending"  # its Ending waits for the checkpointer to commit it
    ENDED = "ended"  # the ending is committed
    RELEASED = "released"  # owner and lease cleared: another process takes it over
    LOST = "lost"  # fenced: another process owns it; nothing more is written


NEXT: dict[State, frozenset[State]] = {
    State.RUNNING: frozenset({State.CANCELLING, State.RELEASING, State.ENDING, State.LOST}),
    State.CANCELLING: frozenset({State.RELEASING, State.ENDING, State.LOST}),
    State.RELEASING: frozenset({State.RELEASED, State.LOST}),
    State.ENDING: frozenset({State.ENDED, State.LOST}),
    State.ENDED: frozenset(),
    State.RELEASED: frozenset(),
    State.LOST: frozenset(),
}
FINAL = frozenset(state for state, nexts in NEXT.items() if not nexts)


@dataclass(frozen=True)
class Ending:
    """How an answer ends: terminal status and readable error (its model calls are metered
    as they end, each a Meter)."""

    status: str
    error: str | None = None


@dataclass(frozen=True)
class Meter:
    """The usage of one model call of an answer, for its llm_calls row."""

    step: int
    usage: dict[str, int]
    estimated: bool


@dataclass
class Take:
    """What one commit takes from a stream: its new text and reasoning, layout, ledger rows."""

    text: str
    reasoning: str
    text_pieces: int
    reasoning_pieces: int
    layout: list[Entry] | None  # None: unchanged since the last commit
    version: int
    step: int | None  # None: unchanged
    writes: list[Call]
    meters: list[Meter]
    waiters: list[gevent.event.AsyncResult]
    events: list[events.Event]

    @property
    def changes(self) -> bool:
        """Whether committing it changes more than the lease."""
        return bool(
            self.text or self.reasoning or self.layout is not None or self.writes or self.meters
        ) or (self.step is not None)


@dataclass(eq=False)
class Stream:
    """An answer this process owns: what is committed, and what waits for the next checkpoint."""

    message_id: UUID
    conversation_id: UUID
    user_id: UUID | None
    model: str
    epoch: int
    committed: int
    pending: list[str] = field(default_factory=list)
    renewed_at: float = field(default_factory=time.monotonic)
    # When the last commit that wrote its text started; 0 when the next text
    # starts the answer or a part of it, which is committed at once.
    checkpointed_at: float = 0.0
    state: State = State.RUNNING
    ending: Ending | None = None  # set by the move to ENDING, and only by it
    # True once ENDED, False once RELEASED or LOST.
    ended: gevent.event.AsyncResult = field(default_factory=gevent.event.AsyncResult)
    worker: gevent.Greenlet | None = None
    # Parts: the owner's layout, pending reasoning beside pending text, and what
    # the last commit wrote of each (a checkpoint writes layout and step only
    # when they changed, so a plain answer never writes them).
    layout: Layout = field(default_factory=Layout)
    pending_reasoning: list[str] = field(default_factory=list)
    committed_reasoning: int = 0
    committed_version: int = 0
    committed_layout: list[Entry] | None = None
    step: int = 0  # the model call being made (or, between calls, the next one)
    committed_step: int = 0
    # The ledger as this owner knows it, and the rows the next commit writes.
    calls: dict[str, Call] = field(default_factory=dict)
    writes: list[Call] = field(default_factory=list)
    meters: list[Meter] = field(default_factory=list)
    # Woken (True) by the commit that includes everything queued before them.
    waiters: list[gevent.event.AsyncResult] = field(default_factory=list)
    # For the metrics: when this process began generating it (a send or a
    # takeover), and, until its first text is committed, when it was sent.
    began_at: float = field(default_factory=time.monotonic)
    sent_at: float | None = None
    # The committed text, when this process wrote all of it (None when it took the
    # answer over, or continued it, with text already there): FINISH then writes it
    # without reading it back from the chunks.
    committed_text: list[str] | None = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.committed:
            self.committed_text = None
        if self.layout.entries is None and not self.layout.content_length:
            self.layout.content_length = self.committed
            self.layout.reasoning_length = self.committed_reasoning

    @classmethod
    def for_message(cls, message: Message, default_model: str) -> Stream:
        """The stream of a freshly inserted answer this process owns."""
        return cls(
            message_id=message.id,
            conversation_id=message.conversation_id,
            user_id=message.user_id,
            model=message.model or default_model,
            epoch=message.epoch,
            committed=message.content_length,
        )

    def move(self, to: State, ending: Ending | None = None) -> None:
        """Go to `to` (with its Ending when that is ENDING), or raise IllegalTransition."""
        if to not in NEXT[self.state]:
            raise IllegalTransition(f"stream {self.message_id}: {self.state.name} → {to.name}")
        if (to is State.ENDING) != (ending is not None):
            raise IllegalTransition(f"stream {self.message_id}: an Ending goes with ENDING only")
        self.state = to
        if ending is not None:
            self.ending = ending
        if to in FINAL:
            self.ended.set(to is State.ENDED)

    @property
    def accepts_text(self) -> bool:
        """Whether text appended now will be checkpointed."""
        return self.state in (State.RUNNING, State.CANCELLING, State.RELEASING)

    @property
    def handed_off(self) -> bool:
        """Whether the rest of the answer is no longer this process's to write or end."""
        return self.state in (State.RELEASING, State.RELEASED, State.LOST)

    @property
    def has_pending(self) -> bool:
        """Whether anything waits for the next commit besides a lease renewal."""
        return bool(
            self.pending
            or self.pending_reasoning
            or self.writes
            or self.meters
            or self.waiters
            or self.step != self.committed_step
            or self.layout.version != self.committed_version
            or self.layout.entries != self.committed_layout
        )

    def add_text(self, text: str) -> None:
        """Answer text from the model call being made, for the next commit."""
        parts = self._parts()
        self.layout.text(self.step, text)
        if self._parts() > parts or (text and not self.committed and not self.pending):
            self.checkpointed_at = 0.0  # a new part: its first text is due at once
        self.pending.append(text)

    def add_reasoning(self, text: str) -> None:
        """Reasoning from the model call being made, for the next commit."""
        parts = self._parts()
        self.layout.reasoning(self.step, text)
        if self._parts() > parts:
            self.checkpointed_at = 0.0
        self.pending_reasoning.append(text)

    def _parts(self) -> int:
        return len(self.layout.entries or ())

    def record(self, call: Call) -> None:
        """A tool call's new ledger state, for the next commit; its part changes with it."""
        self.calls[call.tool_call_id] = call
        self.writes.append(call)
        for entry in self.layout.tools():
            if entry["tool_call_id"] == call.tool_call_id:
                self.layout.changed(entry)

    def take(self) -> Take:
        """Everything the next commit writes, with the events it announces."""
        text, reasoning = "".join(self.pending), "".join(self.pending_reasoning)
        entries = self.layout.entries
        changed_tools = sorted(
            (e for e in self.layout.tools() if e["v"] > self.committed_version),
            key=lambda e: int(e["v"]),
        )
        # Several changes of one part between two commits are one committed
        # change: renumber them so that the versions a reader sees are
        # consecutive (a skipped version would send it to the database).
        for number, entry in enumerate(changed_tools, start=self.committed_version + 1):
            entry["v"] = number
        self.layout.version = self.committed_version + len(changed_tools)
        announced: list[events.Event] = []
        if text:
            announced.append(self.delta(text))
        if reasoning:
            end = self.committed_reasoning + len(reasoning)
            announced.append(
                events.ReasoningDelta(
                    self.conversation_id, self.message_id, self.committed_reasoning, end, reasoning
                )
            )
        for entry in changed_tools:
            part = ledger.part(entry, self.calls.get(entry["tool_call_id"]))
            announced.append(
                events.ToolChanged(
                    self.conversation_id, self.message_id, entry["v"], entry["tool_call_id"], part
                )
            )
        return Take(
            text=text,
            reasoning=reasoning,
            text_pieces=len(self.pending),
            reasoning_pieces=len(self.pending_reasoning),
            layout=self.layout.snapshot() if entries != self.committed_layout else None,
            version=self.layout.version,
            step=self.step if self.step != self.committed_step else None,
            writes=list(self.writes),
            meters=list(self.meters),
            waiters=list(self.waiters),
            events=announced,
        )

    def taken(self, take: Take) -> None:
        """The commit of `take` returned: advance what is committed, wake who waited for it."""
        del self.pending[: take.text_pieces]
        del self.pending_reasoning[: take.reasoning_pieces]
        del self.writes[: len(take.writes)]
        del self.meters[: len(take.meters)]
        del self.waiters[: len(take.waiters)]
        self.committed += len(take.text)
        if self.committed_text is not None and take.text:
            self.committed_text.append(take.text)
        self.committed_reasoning += len(take.reasoning)
        self.committed_version = take.version
        if take.layout is not None:
            self.committed_layout = take.layout
        if take.step is not None:
            self.committed_step = take.step
        for waiter in take.waiters:
            waiter.set(True)

    def drop_pending(self, why: BaseException) -> None:
        """Nothing more will be committed: forget it, and fail whoever waits for a commit."""
        self.pending.clear()
        self.pending_reasoning.clear()
        self.writes.clear()
        self.meters.clear()
        for waiter in self.waiters:
            waiter.set_exception(why)
        self.waiters.clear()

    def delta(self, text: str) -> events.Delta:
        """The event for text appended at the committed offset."""
        end = self.committed + len(text)
        return events.Delta(self.conversation_id, self.message_id, self.committed, end, text)
