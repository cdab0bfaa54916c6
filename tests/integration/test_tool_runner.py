"""Sending tool calls over HTTP to the fake tool server, and running Python tools."""

from __future__ import annotations

import socket

import gevent
from prometheus_client import REGISTRY

from chatsvc.engine import tool_runner
from chatsvc.engine.tools import (
    HttpTool,
    PythonTool,
    RegisteredPythonTool,
    ToolCall,
    ToolDeclaration,
)
from tests.faketools import FakeToolServer

CALL = ToolCall("call_0_0", "charge", {"amount": 5}, "m-1", "c-1", "alice", "key-1")


def _http(url: str, timeout_s: float = 5) -> HttpTool:
    return HttpTool(name="charge", url=url, timeout_s=timeout_s)


def _python(run: object, timeout_s: float = 5) -> RegisteredPythonTool:
    tool = PythonTool(name="charge", run=run)  # type: ignore[arg-type]
    declaration = ToolDeclaration(name="charge", timeout_s=timeout_s)
    return RegisteredPythonTool(declaration, tool.run, "test")


def test_a_call_is_a_post_of_its_json_with_the_idempotency_key(fake_tools: FakeToolServer) -> None:
    outcome = tool_runner.run(_http(fake_tools.url("ok", "charge")), CALL)
    assert outcome == tool_runner.Outcome(
        True, output={"tool": "charge", "arguments": {"amount": 5}, "effect": 1}
    )
    (received,) = fake_tools.app.received
    assert received.key == "key-1"
    assert received.body == CALL.body()


def test_a_body_that_is_not_json_is_the_output_as_text(fake_tools: FakeToolServer) -> None:
    outcome = tool_runner.run(_http(fake_tools.url("text", "charge")), CALL)
    assert outcome.ok and outcome.output == "plain text for charge"


def test_failures_become_readable_errors(fake_tools: FakeToolServer) -> None:
    failed = tool_runner.run(_http(fake_tools.url("fail", "charge")), CALL)
    assert failed == tool_runner.Outcome(
        False, error='The tool answered HTTP 500: {"error": "the tool broke"}'
    )
    timeouts = REGISTRY.get_sample_value(
        "chatsvc_tool_calls_total", {"tool": "charge", "outcome": "timeout"}
    )
    slow = tool_runner.run(_http(fake_tools.url("hang", "charge"), timeout_s=0.3), CALL)
    assert slow == tool_runner.Outcome(
        False, error="The tool did not answer within 0.3 s.", timed_out=True
    )
    assert (
        REGISTRY.get_sample_value(
            "chatsvc_tool_calls_total", {"tool": "charge", "outcome": "timeout"}
        )
        == (timeouts or 0) + 1
    )
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    refused = tool_runner.run(_http(f"http://127.0.0.1:{port}/x"), CALL)
    assert not refused.ok and refused.error is not None
    assert refused.error.startswith("The tool could not be reached")


def test_python_tools_run_in_process_with_the_same_outcomes() -> None:
    assert tool_runner.run(_python(lambda call: {"got": call.arguments}), CALL) == (
        tool_runner.Outcome(True, output={"got": {"amount": 5}})
    )

    def broken(call: ToolCall) -> None:
        raise ValueError("no such customer")

    assert tool_runner.run(_python(broken), CALL) == tool_runner.Outcome(
        False, error="The tool failed: ValueError: no such customer"
    )
    slow = tool_runner.run(_python(lambda call: gevent.sleep(5), timeout_s=0.2), CALL)
    assert slow.error == "The tool did not answer within 0.2 s."
