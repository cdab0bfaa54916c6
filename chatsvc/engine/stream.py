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

from chatsvc.engine import events
from chatsvc.engine.messages import Message


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
    """How an answer ends: terminal status, usage of the last LLM call, readable error."""

    status: str
    usage: dict[str, int] | None = None
    estimated: bool = False
    error: str | None = None
    called: bool = True


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
    checkpointed_at: float = 0.0  # when the last commit that wrote its text started
    state: State = State.RUNNING
    ending: Ending | None = None  # set by the move to ENDING, and only by it
    # True once ENDED, False once RELEASED or LOST.
    ended: gevent.event.AsyncResult = field(default_factory=gevent.event.AsyncResult)
    worker: gevent.Greenlet | None = None

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

    def delta(self, text: str) -> events.Delta:
        """The event for text appended at the committed offset."""
        end = self.committed + len(text)
        return events.Delta(self.conversation_id, self.message_id, self.committed, end, text)
