"""Sending one tool call: an HTTP POST with its Idempotency-Key, or a Python tool's `run`.

The outcome is either the tool's output or a readable error; nothing here
raises for a tool's failure, so the answer loop always has something to commit
and to tell the model. Exactly-once is not decided here but by the ledger,
which records the call as running before this is called.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import gevent
import httpx

from chatsvc import metrics
from chatsvc.engine.tools import HttpTool, RegisteredPythonTool, Tool, ToolCall, declaration_of

log = logging.getLogger(__name__)

# How much of a failed tool's response body an error message quotes.
ERROR_EXCERPT_CHARS = 300


@dataclass(frozen=True)
class Outcome:
    """What a call came to: `output` when it succeeded, else `error`."""

    ok: bool
    output: Any = None
    error: str | None = None
    timed_out: bool = False

    @property
    def label(self) -> str:
        """The outcome as chatsvc_tool_calls_total counts it."""
        if self.timed_out:
            return "timeout"
        return "succeeded" if self.ok else "failed"


def run(tool: Tool, call: ToolCall) -> Outcome:
    """Send the call and wait at most the tool's timeout for its outcome."""
    timeout_s = declaration_of(tool).timeout_s
    started = time.monotonic()
    try:
        with gevent.Timeout(timeout_s):
            if isinstance(tool, HttpTool):
                outcome = _post(tool, call, timeout_s)
            else:
                outcome = _run_python(tool, call)
    except gevent.Timeout:
        outcome = _timed_out(timeout_s)
    metrics.TOOL_SECONDS.labels(call.name).observe(time.monotonic() - started)
    metrics.TOOL_CALLS.labels(call.name, outcome.label).inc()
    return outcome


def _timed_out(timeout_s: float) -> Outcome:
    return Outcome(False, error=f"The tool did not answer within {timeout_s:g} s.", timed_out=True)


def _run_python(tool: RegisteredPythonTool, call: ToolCall) -> Outcome:
    try:
        return Outcome(True, output=tool.run(call))
    except Exception as exc:
        log.warning("tool %s failed: %s", call.name, exc)
        return Outcome(False, error=f"The tool failed: {type(exc).__name__}: {exc}")


def _post(tool: HttpTool, call: ToolCall, timeout_s: float) -> Outcome:
    headers = {"Idempotency-Key": call.idempotency_key, "Content-Type": "application/json"}
    body = json.dumps(call.body(), ensure_ascii=False).encode()
    try:
        response = httpx.post(tool.url, content=body, headers=headers, timeout=timeout_s)
    except httpx.TimeoutException:
        return _timed_out(timeout_s)
    except httpx.HTTPError as exc:
        return Outcome(False, error=f"The tool could not be reached: {exc or type(exc).__name__}.")
    if not response.is_success:
        excerpt = " ".join(response.text.split())[:ERROR_EXCERPT_CHARS]
        detail = f": {excerpt}" if excerpt else ""
        return Outcome(False, error=f"The tool answered HTTP {response.status_code}{detail}")
    try:
        return Outcome(True, output=response.json())
    except ValueError:
        return Outcome(True, output=response.text)
