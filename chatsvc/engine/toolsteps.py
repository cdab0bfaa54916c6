"""The tool calls of one step of an answer: checked, recorded, sent at once, their outcomes kept.

The order is what makes each call happen once: a call is recorded `running`
and that commit returns before its request is sent; every outcome is committed
before the model is called again. After a takeover, `recover` decides each call
of the interrupted step from the ledger: a committed outcome is used, a call
that was running is sent again (same Idempotency-Key) only if its tool is
idempotent and otherwise ends `unknown`, a call never recorded is sent now, and
calls whose arguments were still being written are never sent.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import gevent

from chatsvc.engine import ledger, tool_runner
from chatsvc.engine.checkpoint import Checkpointer
from chatsvc.engine.ledger import Call, Status
from chatsvc.engine.parts import Entry
from chatsvc.engine.stream import Stream
from chatsvc.engine.tool_runner import Outcome
from chatsvc.engine.tools import Registry, Tool, ToolCall, declaration_of

log = logging.getLogger(__name__)

NOT_RUN_MAX_STEPS = "Not run: the answer reached its limit of model calls (CHATSVC_MAX_STEPS)."


@dataclass(frozen=True)
class Send:
    """A call to send, with its tool."""

    call: Call
    tool: Tool


class ToolSteps:
    """Runs the tool calls of an answer's steps through the ledger."""

    def __init__(self, checkpointer: Checkpointer, registry: Registry, user: str) -> None:
        self.checkpointer = checkpointer
        self.registry = registry
        self.user = user

    def run(self, stream: Stream, entries: list[Entry]) -> None:
        """Run the calls the model call `stream.step` asked for; the next step is then due."""
        sends = [send for entry in entries if (send := self._check(stream, entry)) is not None]
        self._send(stream, sends)

    def refuse(self, stream: Stream, entries: list[Entry], error: str) -> None:
        """End calls that will not run `output-error` (committed with the answer's next commit)."""
        for entry in entries:
            if entry["tool_call_id"] not in stream.calls:
                stream.record(Call.refused(stream.message_id, entry, None, error))
        self.checkpointer.changed(stream)

    def recover(self, stream: Stream, max_steps: int) -> bool:
        """After a takeover: settle the step that was interrupted; False if there was none.

        When it returns True, the step's calls all have committed outcomes and
        the next model call is due.
        """
        entries = [e for e in stream.layout.tools() if e["step"] == stream.step]
        if not entries:
            return False
        if not all(e["complete"] for e in entries):
            # The owner died while the model wrote the arguments: nothing was sent.
            self.refuse(stream, entries, ledger.NOT_SENT_CUT_OFF)
            stream.step += 1
            self.checkpointer.flush(stream)
            return True
        sends: list[Send] = []
        for entry in entries:
            call = stream.calls.get(entry["tool_call_id"])
            tool = self.registry.get(entry["name"])
            if call is None and stream.step + 1 >= max_steps:
                stream.record(Call.refused(stream.message_id, entry, None, NOT_RUN_MAX_STEPS))
            elif call is None:
                send = self._check(stream, entry)
                sends += [send] if send is not None else []
            elif call.status is Status.RUNNING and tool and declaration_of(tool).idempotent:
                sends.append(Send(call.move(Status.RUNNING), tool))
            elif call.status is Status.RUNNING:
                stream.record(call.move(Status.UNKNOWN, error=ledger.UNKNOWN_AFTER_CRASH))
        self._send(stream, sends)
        return True

    def abandon(self, stream: Stream, running: str, unsent: str) -> None:
        """The answer stops: calls still running end `unknown`, calls never sent `failed`."""
        for call in list(stream.calls.values()):
            if call.status is Status.RUNNING:
                stream.record(call.move(Status.UNKNOWN, error=running))
        self.refuse(stream, stream.layout.tools(), unsent)

    def _check(self, stream: Stream, entry: Entry) -> Send | None:
        """The call to send, or None after recording why it cannot be sent."""
        tool = self.registry.get(entry["name"])
        error: str | None = None
        try:
            arguments = json.loads(entry["input_text"] or "{}")
        except ValueError as exc:
            arguments, error = None, f"The arguments are not valid JSON ({exc}); it was not run."
        if not ledger.storable(arguments):
            arguments, error = None, "The arguments are not plain JSON; it was not run."
        if tool is None:
            error = f"There is no tool named {entry['name']!r}; it was not run."
        elif error is None:
            problem = declaration_of(tool).argument_errors(arguments)
            if problem is not None:
                error = f"The arguments do not fit the tool's parameters ({problem}); not run."
        if error is not None or tool is None:
            stream.record(Call.refused(stream.message_id, entry, arguments, error or ""))
            return None
        return Send(Call.sent(stream.message_id, entry, arguments), tool)

    def _send(self, stream: Stream, sends: list[Send]) -> None:
        """Record the calls running, commit, send them at once, commit each outcome, next step."""
        for send in sends:
            stream.record(send.call)
        self.checkpointer.flush(stream)  # `running` is committed before any request goes out
        workers = {gevent.spawn(self._outcome, stream, send): send for send in sends}
        try:
            for worker in gevent.iwait(list(workers)):
                outcome: Outcome = worker.value
                call = stream.calls[workers[worker].call.tool_call_id]
                if outcome.ok:
                    stream.record(call.move(Status.SUCCEEDED, output=outcome.output))
                else:
                    stream.record(call.move(Status.FAILED, error=outcome.error))
                self.checkpointer.changed(stream)
        finally:
            # Cancelled or fenced: the requests still out are abandoned.
            gevent.killall(list(workers), block=False)
        stream.step += 1
        self.checkpointer.flush(stream)  # every outcome is committed before the next model call

    def _outcome(self, stream: Stream, send: Send) -> Outcome:
        call = ToolCall(
            tool_call_id=send.call.tool_call_id,
            name=send.call.name,
            arguments=send.call.arguments,
            message_id=str(stream.message_id),
            conversation_id=str(stream.conversation_id),
            user=self.user,
            idempotency_key=send.call.idempotency_key,
        )
        try:
            outcome = tool_runner.run(send.tool, call)
        except Exception as exc:  # a tool's failure is an outcome, never the answer's
            log.warning("tool call %s failed: %s", call.tool_call_id, exc)
            return Outcome(False, error=f"The tool failed: {type(exc).__name__}: {exc}")
        if outcome.ok and not ledger.storable(outcome.output):
            return Outcome(False, error="The tool's output is not plain JSON.")
        return outcome
