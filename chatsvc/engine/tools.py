"""The tools a model may call: declared in a TOML file, or registered by Python packages.

`CHATSVC_TOOLS_FILE` names a TOML file of `[[tools]]` tables; each is an HTTP
tool that chatsvc POSTs a call to. Python packages register tools through the
entry point group `chatsvc.tools`: each entry point names a `PythonTool`. Both
kinds go through the same ledger when they run, so what makes a call happen
exactly once does not depend on how the tool is implemented.

Everything is checked when the registry is loaded, so a bad file stops
`chatsvc serve` at startup with a message that names the file, the tool and the
problem, rather than failing the first answer that calls it.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chatsvc.config import ConfigError

ENTRY_POINT_GROUP = "chatsvc.tools"

# What providers accept as a function name (OpenAI's rule, the strictest in common use).
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class ToolsError(ConfigError):
    """The tools cannot be loaded: a bad tools file or a bad registered tool."""


@dataclass(frozen=True)
class ToolCall:
    """One call as a tool receives it (the JSON body of an HTTP tool's request)."""

    tool_call_id: str
    name: str
    arguments: dict[str, Any]
    message_id: str
    conversation_id: str
    user: str
    idempotency_key: str

    def body(self) -> dict[str, Any]:
        """The JSON body POSTed to an HTTP tool."""
        return {
            "tool_call_id": self.tool_call_id,
            "name": self.name,
            "arguments": self.arguments,
            "message_id": self.message_id,
            "conversation_id": self.conversation_id,
            "user": self.user,
        }


class ToolDeclaration(BaseModel):
    """What the model is told about a tool, and how chatsvc may run it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    idempotent: bool = False
    timeout_s: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("parameters")
    @classmethod
    def _object_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type") != "object":
            raise ValueError('parameters must be a JSON schema with type = "object"')
        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"parameters is not a valid JSON schema: {exc.message}") from None
        return value

    def for_model(self) -> dict[str, Any]:
        """The tool as litellm passes it to the model (OpenAI's function tool format)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def argument_errors(self, arguments: Any) -> str | None:
        """Why these arguments do not fit the parameters schema, or None when they do."""
        if not isinstance(arguments, dict):
            return "the arguments must be a JSON object"
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(self.parameters).iter_errors(arguments)
        )
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path)
        return f"{where}: {error.message}" if where else error.message


class HttpTool(ToolDeclaration):
    """A tool served over HTTP: each call is a POST of the call's JSON to `url`."""

    kind: Literal["http"] = "http"
    url: str

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url must be an http:// or https:// URL, not {value!r}")
        return value


@dataclass(frozen=True)
class PythonTool:
    """A tool written in Python, registered through the `chatsvc.tools` entry point group.

    `run` receives the call and returns the output (any JSON value, or text);
    raising an exception makes the call an `output-error` with its message.
    """

    name: str
    run: Callable[[ToolCall], Any]
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    idempotent: bool = False
    timeout_s: float = 30.0


@dataclass(frozen=True)
class RegisteredPythonTool:
    """A Python tool with its declaration checked like a file's."""

    declaration: ToolDeclaration
    run: Callable[[ToolCall], Any]
    source: str


Tool = HttpTool | RegisteredPythonTool


def declaration_of(tool: Tool) -> ToolDeclaration:
    """The part of a tool the model and the ledger see."""
    return tool if isinstance(tool, HttpTool) else tool.declaration


class ToolsFile(BaseModel):
    """The tools file: a list of `[[tools]]` tables."""

    model_config = ConfigDict(extra="forbid")

    tools: list[dict[str, Any]] = []


@dataclass(frozen=True)
class Registry:
    """Every tool the model may call, by name, in the order they were declared."""

    tools: dict[str, Tool]

    def __len__(self) -> int:
        return len(self.tools)

    def get(self, name: str) -> Tool | None:
        """The tool of this name, if there is one."""
        return self.tools.get(name)

    def for_model(self) -> list[dict[str, Any]]:
        """The tools as the model is told about them."""
        return [declaration_of(tool).for_model() for tool in self.tools.values()]


EMPTY = Registry({})


def load(tools_file: Path | None, *, entry_points: Iterable[Any] | None = None) -> Registry:
    """The registry: the tools file's tools, then the registered Python tools."""
    tools: dict[str, Tool] = {}
    if tools_file is not None:
        for tool in read_tools_file(tools_file):
            tools[tool.name] = tool
    found = metadata.entry_points(group=ENTRY_POINT_GROUP) if entry_points is None else entry_points
    for entry_point in found:
        registered = _registered(entry_point)
        name = registered.declaration.name
        earlier = tools.get(name)
        if earlier is not None:
            where = str(tools_file) if isinstance(earlier, HttpTool) else earlier.source
            raise ToolsError(f"{registered.source}: tool {name!r} is already declared by {where}")
        tools[name] = registered
    return Registry(tools)


def read_tools_file(path: Path) -> list[HttpTool]:
    """The HTTP tools of a tools file; ToolsError naming the file, the tool and the problem."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ToolsError(f"{path}: cannot read the tools file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ToolsError(f"{path}: the tools file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ToolsError(f"{path}: not valid TOML ({exc})") from None
    try:
        tables = ToolsFile.model_validate(raw).tools
    except ValidationError as exc:
        raise ToolsError(f"{path}: {_problem(exc)} (expected only [[tools]] tables)") from None
    tools: list[HttpTool] = []
    seen: set[str] = set()
    for index, table in enumerate(tables, start=1):
        label = (
            f"tool {table['name']!r}" if isinstance(table.get("name"), str) else f"tool #{index}"
        )
        try:
            tool = HttpTool.model_validate(table)
        except ValidationError as exc:
            raise ToolsError(f"{path}: {label}: {_problem(exc)}") from None
        if tool.name in seen:
            raise ToolsError(f"{path}: {label}: the name is used by another tool in the file")
        seen.add(tool.name)
        tools.append(tool)
    return tools


def _registered(entry_point: Any) -> RegisteredPythonTool:
    source = f"entry point {entry_point.name!r} ({entry_point.value}) in {ENTRY_POINT_GROUP}"
    try:
        tool = entry_point.load()
    except Exception as exc:
        raise ToolsError(f"{source}: cannot be loaded ({type(exc).__name__}: {exc})") from None
    if not isinstance(tool, PythonTool) or not callable(tool.run):
        raise ToolsError(f"{source}: must name a chatsvc.engine.tools.PythonTool")
    try:
        declaration = ToolDeclaration(
            name=tool.name,
            description=tool.description,
            parameters=tool.parameters,
            idempotent=tool.idempotent,
            timeout_s=tool.timeout_s,
        )
    except ValidationError as exc:
        raise ToolsError(f"{source}: tool {tool.name!r}: {_problem(exc)}") from None
    return RegisteredPythonTool(declaration, tool.run, source)


def _problem(exc: ValidationError) -> str:
    """The first problem pydantic found, as a sentence naming the field."""
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    if error["type"] == "missing":
        return f"{where!r} is required"
    return f"{where}: {message}" if where else message


def describe(registry: Registry) -> str:
    """The tools as `chatsvc tools` prints them: what the model sees, and how each runs."""
    if not registry.tools:
        return "no tools (set CHATSVC_TOOLS_FILE, or install a package that registers some)"
    blocks = []
    for tool in registry.tools.values():
        declaration = declaration_of(tool)
        runs = f"POST {tool.url}" if isinstance(tool, HttpTool) else f"Python, {tool.source}"
        retry = "idempotent" if declaration.idempotent else "not idempotent"
        blocks.append(
            f"{declaration.name}  ({runs}; {retry}; timeout {declaration.timeout_s:g}s)\n"
            f"  {declaration.description or '(no description)'}\n"
            f"  parameters: {json.dumps(declaration.parameters, ensure_ascii=False)}"
        )
    return "\n\n".join(blocks)
