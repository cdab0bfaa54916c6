"""The built-in tools: harmless, offered to the built-in offline model only.

They let the offline model show a whole tool loop with no network and no
configuration (`scripts/run`, the quick start); an operator's real models are
never offered a tool the operator did not configure.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from chatsvc.engine.tools import RegisteredPythonTool, Registry, ToolCall, ToolDeclaration

CURRENT_TIME = "current_time"


def current_time(call: ToolCall) -> dict[str, Any]:
    """The current UTC time, as ISO 8601."""
    return {"utc": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")}


REGISTRY = Registry(
    {
        CURRENT_TIME: RegisteredPythonTool(
            ToolDeclaration(
                name=CURRENT_TIME,
                description="The current date and time in UTC.",
                parameters={"type": "object", "properties": {}},
                idempotent=True,
                timeout_s=5,
            ),
            current_time,
            "chatsvc built-in",
        )
    }
)
