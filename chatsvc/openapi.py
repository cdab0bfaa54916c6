"""The OpenAPI 3 description of the HTTP API (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "chatsvc", "version": "0.1.0"},
    "paths": {},
}
