"""Settings: the only module that reads the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

OFFLINE_MODEL = "chatsvc/offline"
ORPHAN_POLICIES = ("resume", "interrupt")


class ConfigError(ValueError):
    """A setting in the environment has a value chatsvc cannot use."""


@dataclass(frozen=True)
class Settings:
    """Everything chatsvc can be configured with (the README's configuration table)."""

    database_url: str | None = None
    data_dir: Path = Path(".chatsvc")
    model: str = OFFLINE_MODEL
    models: tuple[str, ...] = ()
    llm_api_base: str | None = None
    llm_api_key: str | None = None
    checkpoint_ms: int = 100
    checkpoint_min_ms: int = 0
    lease_s: float = 10.0
    orphan_policy: str = "resume"
    max_resumes: int = 3
    heartbeat_s: float = 15.0
    max_message_chars: int = 32_000
    pool_size: int = 10
    subscriber_queue: int = 256
    offline_delay_s: float = 0.03
    tools_file: Path | None = None
    max_steps: int = 8

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from the environment (or any mapping), validating each."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, key, parse in _VARIABLES:
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            try:
                values[key] = parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{name}={raw!r}: {exc}") from None
        return cls(**values).validated()

    def validated(self) -> Settings:
        """Return self, or raise ConfigError naming the first impossible value."""
        if self.checkpoint_ms < 1:
            raise ConfigError("CHATSVC_CHECKPOINT_MS must be at least 1")
        if self.checkpoint_min_ms > self.checkpoint_ms:
            raise ConfigError("CHATSVC_CHECKPOINT_MIN_MS must not exceed CHATSVC_CHECKPOINT_MS")
        if self.lease_s * 1000 < 3 * self.checkpoint_ms:
            raise ConfigError("CHATSVC_LEASE_S must be at least three checkpoint intervals")
        if self.orphan_policy not in ORPHAN_POLICIES:
            raise ConfigError(f"CHATSVC_ORPHAN_POLICY must be one of {', '.join(ORPHAN_POLICIES)}")
        if self.max_resumes < 0:
            raise ConfigError("CHATSVC_MAX_RESUMES must not be negative")
        if self.heartbeat_s <= 0:
            raise ConfigError("CHATSVC_HEARTBEAT_S must be positive")
        if self.max_message_chars < 1:
            raise ConfigError("CHATSVC_MAX_MESSAGE_CHARS must be at least 1")
        if self.max_steps < 1:
            raise ConfigError("CHATSVC_MAX_STEPS must be at least 1")
        if self.models and self.model not in self.models:
            raise ConfigError(
                f"CHATSVC_MODEL={self.model!r} is not in CHATSVC_MODELS: list the default model"
                " there too, or set CHATSVC_MODEL to one of them"
            )
        if self.pool_size < 2:
            raise ConfigError("CHATSVC_POOL_SIZE must be at least 2")
        return self

    def with_(self, **changes: Any) -> Settings:
        """A copy with some values changed (tests and the CLI use it)."""
        return replace(self, **changes).validated()

    @property
    def max_body_bytes(self) -> int:
        """Largest request body: a maximal message, JSON-escaped, plus room for other fields."""
        return self.max_message_chars * 6 + 16_384


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _model_names(raw: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in raw.split(","))
    if "" in names:
        raise ValueError("an empty model name (comma-separated litellm model names)")
    return tuple(dict.fromkeys(names))


def _positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError("must be positive")
    return value


_VARIABLES: tuple[tuple[str, str, Any], ...] = (
    ("DATABASE_URL", "database_url", str),
    ("CHATSVC_DATA_DIR", "data_dir", Path),
    ("CHATSVC_MODEL", "model", str),
    ("CHATSVC_MODELS", "models", _model_names),
    ("CHATSVC_LLM_API_BASE", "llm_api_base", str),
    ("CHATSVC_LLM_API_KEY", "llm_api_key", str),
    ("CHATSVC_CHECKPOINT_MS", "checkpoint_ms", _positive_int),
    ("CHATSVC_CHECKPOINT_MIN_MS", "checkpoint_min_ms", _positive_int),
    ("CHATSVC_LEASE_S", "lease_s", _positive_float),
    ("CHATSVC_ORPHAN_POLICY", "orphan_policy", str),
    ("CHATSVC_MAX_RESUMES", "max_resumes", _positive_int),
    ("CHATSVC_HEARTBEAT_S", "heartbeat_s", _positive_float),
    ("CHATSVC_MAX_MESSAGE_CHARS", "max_message_chars", _positive_int),
    ("CHATSVC_POOL_SIZE", "pool_size", _positive_int),
    ("CHATSVC_SUBSCRIBER_QUEUE", "subscriber_queue", _positive_int),
    ("CHATSVC_OFFLINE_DELAY_S", "offline_delay_s", float),
    ("CHATSVC_TOOLS_FILE", "tools_file", Path),
    ("CHATSVC_MAX_STEPS", "max_steps", _positive_int),
)
