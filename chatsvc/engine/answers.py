"""Running answers: one greenlet per answer reads the LLM and hands text to the checkpointer."""

from __future__ import annotations

import json
import logging
from typing import Any

import gevent

from chatsvc.config import Settings
from chatsvc.engine import llm, prompts
from chatsvc.engine import messages as message_rows
from chatsvc.engine.checkpoint import Checkpointer
from chatsvc.engine.stream import Ending, State, Stream

log = logging.getLogger(__name__)


class Answerer:
    """Starts and runs the answers this process owns, one greenlet each."""

    def __init__(self, settings: Settings, pool: Any, checkpointer: Checkpointer) -> None:
        self.settings = settings
        self.pool = pool
        self.checkpointer = checkpointer

    def start(self, stream: Stream, *, resumed: bool = False) -> Stream:
        """Begin (or, after a takeover, continue) generating an answer this process owns."""
        self.checkpointer.adopt(stream)
        stream.worker = gevent.spawn(self._run, stream, resumed)
        return stream

    def _prompt(self, stream: Stream, resumed: bool) -> list[dict[str, str]]:
        with self.pool.connection() as conn:
            rows = message_rows.in_conversation(conn, stream.conversation_id)
        history: list[tuple[str, str]] = []
        partial = None
        for row in rows:
            if row.id == stream.message_id:
                partial = row.content[: stream.committed] if resumed else None
                break
            history.append((row.role, row.content))
        return prompts.prompt_for(history, partial)

    def _run(self, stream: Stream, resumed: bool) -> None:
        usage: llm.Piece | None = None
        produced: list[str] = []
        prompt: list[dict[str, str]] = []
        try:
            prompt = self._prompt(stream, resumed)
            for piece in llm.stream(self.settings, stream.model, prompt):
                if piece.text:
                    produced.append(piece.text)
                    self.checkpointer.append(stream, piece.text)
                if piece.usage is not None:
                    usage = piece
            ending = self._ending("completed", usage, prompt, produced)
        except Exception as exc:
            # Cancelled and Fenced are thrown into this greenlet wherever it waits,
            # often inside litellm, which wraps them: decide by the stream's state.
            if stream.handed_off:
                return
            if stream.state is State.CANCELLING:
                ending = self._ending("cancelled", usage, prompt, produced)
            else:
                log.warning("answer %s failed: %s", stream.message_id, exc)
                ending = self._ending(
                    "failed", usage, prompt, produced, error=llm.readable_error(exc)
                )
        self.checkpointer.end(stream, ending)

    @staticmethod
    def _ending(
        status: str,
        usage: llm.Piece | None,
        prompt: list[dict[str, str]],
        produced: list[str],
        error: str | None = None,
    ) -> Ending:
        if not prompt:
            return Ending(status, error=error, called=False)
        if usage is not None:
            return Ending(status, usage=usage.usage, estimated=usage.estimated, error=error)
        estimate = {
            "prompt_tokens": llm.estimate_tokens(json.dumps(prompt)),
            "completion_tokens": llm.estimate_tokens("".join(produced)),
        }
        return Ending(status, usage=estimate, estimated=True, error=error)
