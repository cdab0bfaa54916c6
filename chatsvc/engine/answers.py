"""Running answers: one greenlet per answer, calling the model step by step.

Model call `step` 0, 1, ... streams text, reasoning and tool call fragments
into the stream, which the checkpointer commits. A call that asks for no tool
ends the answer; otherwise its calls run (engine/toolsteps.py) and the model is
called again with their results, at most `CHATSVC_MAX_STEPS` times. Every model
call is metered once: one llm_calls row, committed with the calls it asked for
or with the answer's ending.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import gevent

from chatsvc import logs, metrics
from chatsvc.config import OFFLINE_MODEL, Settings
from chatsvc.engine import builtin_tools, history, ledger, llm, prompts, provider_errors
from chatsvc.engine.checkpoint import Checkpointer
from chatsvc.engine.continuation import Seam
from chatsvc.engine.history import Branch
from chatsvc.engine.stream import Ending, Meter, State, Stream
from chatsvc.engine.tools import Registry
from chatsvc.engine.toolsteps import NOT_RUN_MAX_STEPS, ToolSteps

log = logging.getLogger(__name__)


@dataclass
class ModelCall:
    """One model call as it streams: what it was asked, what it said, what it reported using."""

    prompt: prompts.Prompt
    produced: list[str] = field(default_factory=list)
    usage: llm.Piece | None = None

    def meter(self, step: int, refused: bool = False) -> Meter:
        """Its llm_calls row: the reported usage, else an estimate, else (a call the provider
        refused or never received, with nothing produced) no tokens at all."""
        if self.usage is not None and self.usage.usage is not None:
            return Meter(step, self.usage.usage, self.usage.estimated)
        if refused and not self.produced:
            return Meter(step, {"prompt_tokens": 0, "completion_tokens": 0}, False)
        estimate = {
            "prompt_tokens": llm.estimate_tokens(json.dumps(self.prompt)),
            "completion_tokens": llm.estimate_tokens("".join(self.produced)),
        }
        return Meter(step, estimate, True)


class Answerer:
    """Starts and runs the answers this process owns, one greenlet each."""

    def __init__(
        self, settings: Settings, pool: Any, checkpointer: Checkpointer, registry: Registry
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.checkpointer = checkpointer
        self.registry = registry

    def start(
        self,
        stream: Stream,
        *,
        resumed: bool = False,
        branch: Branch | None = None,
        sent_at: float | None = None,
    ) -> Stream:
        """Begin (or, after a takeover, continue) generating an answer this process owns;
        `branch`: its prompt's messages, when the transaction that inserted it read them;
        `sent_at`: when the request that made it began (time.monotonic)."""
        if not resumed:
            stream.sent_at = stream.began_at if sent_at is None else sent_at
        metrics.ANSWERS_STARTED.labels("resumed" if resumed else "sent").inc()
        self.checkpointer.adopt(stream)
        stream.worker = gevent.spawn(self._run, stream, resumed, branch)
        return stream

    def tools_for(self, model: str) -> Registry:
        """The tools offered to a model: the operator's, and the built-in ones for the offline
        model only (a real model never gets a tool its operator did not configure)."""
        if model == OFFLINE_MODEL:
            return Registry({**builtin_tools.REGISTRY.tools, **self.registry.tools})
        return self.registry

    def _run(self, stream: Stream, resumed: bool, branch: Branch | None) -> None:
        logs.MESSAGE_ID.set(str(stream.message_id))  # on every line this greenlet logs
        current: ModelCall | None = None
        steps: ToolSteps | None = None
        try:
            registry = self.tools_for(stream.model)
            steps = ToolSteps(self.checkpointer, registry, self._prepare(stream, registry, resumed))
            continuing = resumed and not steps.recover(stream, self.settings.max_steps)
            while True:
                if stream.step >= self.settings.max_steps:
                    ending = Ending("completed", error=self._max_steps_error())
                    break
                prompt, partial = self._prompt(stream, continuing, branch)
                branch = None  # read once: a later call's prompt has the tool results
                current = ModelCall(prompt)
                self._call(stream, current, registry, Seam(partial or ""))
                stream.meters.append(current.meter(stream.step))
                current, continuing = None, False
                entries = stream.layout.complete(stream.step)
                self.checkpointer.changed(stream)
                if not entries:
                    ending = Ending("completed")
                    break
                if stream.step + 1 >= self.settings.max_steps:
                    steps.refuse(stream, entries, NOT_RUN_MAX_STEPS)
                    ending = Ending("completed", error=self._max_steps_error())
                    break
                steps.run(stream, entries)
        except Exception as exc:
            # Cancelled and Fenced are thrown into this greenlet wherever it waits,
            # often inside litellm, which wraps them: decide by the stream's state.
            if stream.handed_off:
                return
            cancelled = stream.state is State.CANCELLING
            if current is not None:
                refused = not cancelled and provider_errors.classify(exc) is not None
                stream.meters.append(current.meter(stream.step, refused))
            if cancelled:
                ending = Ending("cancelled")
                running, unsent = ledger.CANCELLED, ledger.NOT_SENT_CANCELLED
            else:
                log.warning("answer %s failed: %s", stream.message_id, exc)
                ending = Ending("failed", error=provider_errors.readable(exc))
                running, unsent = ledger.ENDED_RUNNING, ledger.NOT_SENT_FAILED
            if steps is not None:
                steps.abandon(stream, running, unsent)
        self.checkpointer.end(stream, ending)

    def _prepare(self, stream: Stream, registry: Registry, resumed: bool) -> str:
        """Read what the answer's tool steps need: the user's name, which only tools are
        sent, and after a takeover the ledger. Neither: no transaction before the model call."""
        if not registry.tools and not resumed:
            return ""
        with self.pool.connection() as conn:
            if resumed:
                stream.calls = ledger.read(conn, stream.message_id)
            return history.user_name(conn, stream.user_id) if registry.tools else ""

    def _max_steps_error(self) -> str:
        return (
            f"The answer stopped after {self.settings.max_steps} model calls "
            f"(CHATSVC_MAX_STEPS); the tools of its last call were not run."
        )

    def _call(self, stream: Stream, call: ModelCall, registry: Registry, seam: Seam) -> None:
        """Stream one model call into the stream's parts (`seam` trims the start of a
        continuation that repeats the text it continues)."""
        offered = registry.for_model() or None
        for piece in llm.stream(self.settings, stream.model, call.prompt, offered):
            # Postgres text and jsonb cannot hold NUL: a model's NUL would stop the
            # checkpointer, which commits every answer of the process.
            reasoning, text = _no_nul(piece.reasoning), _no_nul(piece.text)
            if reasoning or piece.tool_calls:
                # Anything but text ends the seam: the text it held comes first.
                self._append(stream, seam.flush())
            if reasoning:
                call.produced.append(reasoning)
                self.checkpointer.append_reasoning(stream, reasoning)
            if text:
                call.produced.append(text)
                self._append(stream, seam.feed(text))
            for fragment in piece.tool_calls:
                call.produced.append(fragment.arguments)
                if stream.accepts_text:
                    stream.layout.tool_fragment(
                        stream.step,
                        fragment.index,
                        fragment.id and _no_nul(fragment.id),
                        fragment.name and _no_nul(fragment.name),
                        _no_nul(fragment.arguments),
                    )
                    self.checkpointer.changed(stream)
            if piece.usage is not None:
                call.usage = piece
        self._append(stream, seam.flush())

    def _append(self, stream: Stream, text: str) -> None:
        if text:
            self.checkpointer.append(stream, text)

    def _prompt(
        self, stream: Stream, continuing: bool, branch: Branch | None
    ) -> tuple[prompts.Prompt, str | None]:
        """The answer's branch before it, then the answer's committed parts; and, when the
        model is asked to continue its cut-off text, that text. `branch`: already read."""
        if branch is None:
            with self.pool.connection() as conn:
                branch = history.said_before(conn, stream.message_id)
        before, answer = branch
        messages: prompts.Prompt = []
        for said in before:
            if said.role == "assistant" and said.parts:
                exchanges, text = prompts.answer_messages(said.parts, said.steps)
                messages += exchanges
                if text:
                    messages.append({"role": "assistant", "content": text})
            elif said.content:
                messages.append({"role": said.role, "content": said.content})
        if answer is not None and answer.parts:
            exchanges, partial = prompts.answer_messages(answer.parts, answer.steps)
            messages += exchanges
            # Only the text of the model call that was cut off is continued.
            if continuing and self._cut_off_text(stream):
                return messages + prompts.continuation(partial), partial
        return messages, None

    @staticmethod
    def _cut_off_text(stream: Stream) -> bool:
        entries = stream.layout.entries
        if entries is None:
            return stream.committed > 0
        text = [e for e in entries if e["type"] == "text"]
        return bool(text) and text[-1]["step"] == stream.step and entries[-1]["type"] != "tool"


def _no_nul(text: str) -> str:
    return text.replace("\x00", "")
