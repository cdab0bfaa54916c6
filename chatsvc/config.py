"""Settings: the only module that reads the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

OFFLINE_MODEL = "chatsvc/offline"
ORPHAN_POLICIES = ("resume", "interrupt")
LOG_FORMATS = ("text", "json")


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
    llm_timeout_s: float = 120.0
    checkpoint_ms: int = 100
    # The coalescing bound: how long after an answer's last checkpoint its later
    # text waits (its first text, and each part's, goes at once). None: the
    # checkpoint interval itself (`coalesce_ms`).
    checkpoint_min_ms: int | None = None
    lease_s: float = 10.0
    orphan_policy: str = "resume"
    max_resumes: int = 3
    heartbeat_s: float = 15.0
    max_message_chars: int = 32_000
    pool_size: int = 20
    subscriber_queue: int = 256
    offline_delay_s: float = 0.03
    tools_file: Path | None = None
    max_steps: int = 8
    max_active_per_user: int = 4
    # A worker whose event loop lags more than this (smoothed) refuses new answers; 0: never.
    max_loop_lag_ms: int = 100
    log_format: str = "text"
    # Where the workers of one instance keep their metrics (prometheus-client
    # reads the same variable itself); `chatsvc serve` makes one when unset.
    metrics_dir: Path | None = None

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
        for wrong, why in self._checks():
            if wrong:
                raise ConfigError(why)
        return self

    def _checks(self) -> list[tuple[bool, str]]:
        """(whether a value is impossible, what to say), in the order they are reported."""
        return [
            (self.checkpoint_ms < 1, "CHATSVC_CHECKPOINT_MS must be at least 1"),
            (
                self.checkpoint_min_ms is not None and self.checkpoint_min_ms > self.checkpoint_ms,
                "CHATSVC_CHECKPOINT_MIN_MS must not exceed CHATSVC_CHECKPOINT_MS",
            ),
            (
                self.lease_s * 1000 < 3 * self.checkpoint_ms,
                "CHATSVC_LEASE_S must be at least three checkpoint intervals",
            ),
            (
                self.orphan_policy not in ORPHAN_POLICIES,
                f"CHATSVC_ORPHAN_POLICY must be one of {', '.join(ORPHAN_POLICIES)}",
            ),
            (self.max_resumes < 0, "CHATSVC_MAX_RESUMES must not be negative"),
            (self.heartbeat_s <= 0, "CHATSVC_HEARTBEAT_S must be positive"),
            (self.max_message_chars < 1, "CHATSVC_MAX_MESSAGE_CHARS must be at least 1"),
            (self.max_steps < 1, "CHATSVC_MAX_STEPS must be at least 1"),
            (
                bool(self.models) and self.model not in self.models,
                f"CHATSVC_MODEL={self.model!r} is not in CHATSVC_MODELS: list the default model"
                " there too, or set CHATSVC_MODEL to one of them",
            ),
            (self.max_active_per_user < 1, "CHATSVC_MAX_ACTIVE_PER_USER must be at least 1"),
            (
                self.log_format not in LOG_FORMATS,
                f"CHATSVC_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}",
            ),
            (self.pool_size < 2, "CHATSVC_POOL_SIZE must be at least 2"),
        ]

    def with_(self, **changes: Any) -> Settings:
        """A copy with some values changed (tests and the CLI use it)."""
        return replace(self, **changes).validated()

    @property
    def coalesce_ms(self) -> int:
        """How long an answer's later text waits for more before it is committed."""
        return self.checkpoint_ms if self.checkpoint_min_ms is None else self.checkpoint_min_ms

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
    ("CHATSVC_LLM_TIMEOUT_S", "llm_timeout_s", _positive_float),
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
    ("CHATSVC_MAX_ACTIVE_PER_USER", "max_active_per_user", _positive_int),
    ("CHATSVC_MAX_LOOP_LAG_MS", "max_loop_lag_ms", _positive_int),
    ("CHATSVC_LOG_FORMAT", "log_format", str),
    ("PROMETHEUS_MULTIPROC_DIR", "metrics_dir", Path),
)
