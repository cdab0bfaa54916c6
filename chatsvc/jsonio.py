"""JSON as chatsvc writes it: ISO-8601 UTC timestamps, UUIDs as strings, UTF-8 as is."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID


def default(value: Any) -> Any:
    """Encode the types our rows carry."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> str:
    """Compact JSON text."""
    return json.dumps(value, default=default, ensure_ascii=False, separators=(",", ":"))
