"""The tool registry: the tools file, Python tools from entry points, and what the model sees."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from chatsvc.cli import main
from chatsvc.engine import tools
from chatsvc.engine.tools import PythonTool, ToolCall, ToolsError

GOOD = """
[[tools]]
name = "charge"
description = "Charge the customer."
url = "http://127.0.0.1:9000/charge"
idempotent = false
timeout_s = 30
parameters = { type = "object", properties = { amount = { type = "number" } }, required = [
    "amount",
] }

[[tools]]
name = "lookup"
url = "https://tools.internal/lookup"
idempotent = true
"""


def _clock(call: ToolCall) -> str:
    return "12:00"


CLOCK = PythonTool(name="clock", run=_clock, description="The time.", idempotent=True)
NOT_A_TOOL = object()
BAD_NAME = PythonTool(name="no spaces allowed", run=_clock)


def _entry(attribute: str, name: str = "x") -> EntryPoint:
    return EntryPoint(name, f"{__name__}:{attribute}", tools.ENTRY_POINT_GROUP)


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tools.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _error(path: Path | None, entry_points: list[Any] | None = None) -> str:
    with pytest.raises(ToolsError) as caught:
        tools.load(path, entry_points=entry_points or [])
    return str(caught.value)


def test_a_tools_file_declares_http_tools_as_the_model_sees_them(tmp_path: Path) -> None:
    registry = tools.load(_file(tmp_path, GOOD), entry_points=[])
    assert list(registry.tools) == ["charge", "lookup"]
    charge = registry.get("charge")
    assert isinstance(charge, tools.HttpTool)
    assert charge.url == "http://127.0.0.1:9000/charge" and not charge.idempotent
    assert registry.for_model()[0] == {
        "type": "function",
        "function": {
            "name": "charge",
            "description": "Charge the customer.",
            "parameters": {
                "type": "object",
                "properties": {"amount": {"type": "number"}},
                "required": ["amount"],
            },
        },
    }
    lookup = registry.get("lookup")
    assert lookup is not None and tools.declaration_of(lookup).timeout_s == 30
    assert registry.get("nope") is None


def test_no_file_and_no_entry_points_is_no_tools() -> None:
    registry = tools.load(None, entry_points=[])
    assert len(registry) == 0 and registry.for_model() == []
    assert "no tools" in tools.describe(registry)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[tools]\nname = 1", "not valid TOML"),
        ("[[other]]\nname = 'x'", "unknown key 'other'"),
        ('[[tools]]\nname = "a"', "tool 'a': 'url' is required"),
        ('[[tools]]\nname = "a b"\nurl = "http://x"', "tool 'a b': name: String should match"),
        ('[[tools]]\nurl = "http://x"', "tool #1: 'name' is required"),
        ('[[tools]]\nname = "a"\nurl = "ftp://x/y"', "tool 'a': url: url must be an http://"),
        ('[[tools]]\nname = "a"\nurl = "file:///etc/passwd"', "tool 'a': url: url must be"),
        (
            '[[tools]]\nname = "a"\nurl = "http://x"\nparameters = { type = "string" }',
            "tool 'a': parameters: parameters must be a JSON schema with type = \"object\"",
        ),
        (
            '[[tools]]\nname = "a"\nurl = "http://x"\n'
            'parameters = { type = "object", properties = 3 }',
            "tool 'a': parameters: parameters is not a valid JSON schema",
        ),
        ('[[tools]]\nname = "a"\nurl = "http://x"\ntimeout_s = 0', "tool 'a': timeout_s:"),
        ('[[tools]]\nname = "a"\nurl = "http://x"\nretries = 3', "tool 'a': unknown key 'retries'"),
        (
            '[[tools]]\nname = "a"\nurl = "http://x"\n[[tools]]\nname = "a"\nurl = "http://y"',
            "tool 'a': the name is used by another tool in the file",
        ),
    ],
)
def test_a_bad_tools_file_names_the_file_the_tool_and_the_problem(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = _file(tmp_path, text)
    message = _error(path)
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_an_unreadable_tools_file_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    assert _error(missing) == f"{missing}: cannot read the tools file (No such file or directory)"
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe")
    assert "not UTF-8" in _error(binary)


def test_python_tools_register_through_entry_points(tmp_path: Path) -> None:
    registry = tools.load(_file(tmp_path, GOOD), entry_points=[_entry("CLOCK", "clock")])
    assert list(registry.tools) == ["charge", "lookup", "clock"]
    clock = registry.get("clock")
    assert isinstance(clock, tools.RegisteredPythonTool)
    assert clock.declaration.idempotent and clock.run is _clock
    assert registry.for_model()[-1]["function"]["name"] == "clock"
    assert "Python, entry point 'clock'" in tools.describe(registry)


@pytest.mark.parametrize(
    ("attribute", "expected"),
    [
        ("NOT_A_TOOL", "must name a chatsvc.engine.tools.PythonTool"),
        ("MISSING", "cannot be loaded (AttributeError"),
        ("BAD_NAME", "tool 'no spaces allowed': name: String should match"),
    ],
)
def test_a_bad_python_tool_names_its_entry_point(attribute: str, expected: str) -> None:
    message = _error(None, [_entry(attribute, "broken")])
    assert message.startswith(f"entry point 'broken' ({__name__}:{attribute}) in chatsvc.tools")
    assert expected in message


def test_a_python_tool_may_not_take_a_declared_name(tmp_path: Path) -> None:
    clashing = PythonTool(name="charge", run=_clock)
    globals()["CLASHING"] = clashing
    path = _file(tmp_path, GOOD)
    message = _error(path, [_entry("CLASHING", "clash")])
    assert f"tool 'charge' is already declared by {path}" in message


def test_arguments_are_checked_against_the_parameters_schema(tmp_path: Path) -> None:
    charge = tools.load(_file(tmp_path, GOOD), entry_points=[]).get("charge")
    assert charge is not None
    declaration = tools.declaration_of(charge)
    assert declaration.argument_errors({"amount": 5}) is None
    assert declaration.argument_errors({}) == "'amount' is a required property"
    assert declaration.argument_errors({"amount": "5"}) == "amount: '5' is not of type 'number'"
    assert declaration.argument_errors([1]) == "the arguments must be a JSON object"


def test_a_call_body_carries_what_the_tool_needs() -> None:
    call = ToolCall("call_1", "charge", {"amount": 5}, "m", "c", "alice", "key")
    assert call.body() == {
        "tool_call_id": "call_1",
        "name": "charge",
        "arguments": {"amount": 5},
        "message_id": "m",
        "conversation_id": "c",
        "user": "alice",
    }


def test_the_cli_lists_the_tools_and_serve_refuses_a_bad_file(tmp_path: Path) -> None:
    runner = CliRunner()
    good = _file(tmp_path, GOOD)
    listed = runner.invoke(main, ["tools"], env={"CHATSVC_TOOLS_FILE": str(good)})
    assert listed.exit_code == 0, listed.output
    assert "charge  (POST http://127.0.0.1:9000/charge; not idempotent; timeout 30s)" in (
        listed.output
    )
    assert "Charge the customer." in listed.output
    as_json = runner.invoke(main, ["tools", "--json"], env={"CHATSVC_TOOLS_FILE": str(good)})
    assert json.loads(as_json.output)[1]["function"]["name"] == "lookup"
    bad = tmp_path / "bad.toml"
    bad.write_text('[[tools]]\nname = "a"\nurl = "ftp://x"\n', encoding="utf-8")
    for command in (["tools"], ["serve", "--port", "1"]):
        refused = runner.invoke(main, command, env={"CHATSVC_TOOLS_FILE": str(bad)})
        assert refused.exit_code == 1
        assert f"{bad}: tool 'a': url: url must be an http:// or https:// URL" in refused.output
