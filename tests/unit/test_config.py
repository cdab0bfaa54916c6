"""Settings from the environment: defaults, parsing, and values chatsvc refuses."""

from __future__ import annotations

import pytest

from chatsvc.config import ConfigError, Settings


def test_an_empty_environment_gives_the_documented_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.database_url is None
    assert (settings.checkpoint_ms, settings.checkpoint_min_ms, settings.coalesce_ms) == (
        100,
        None,
        100,
    )
    assert (settings.lease_s, settings.orphan_policy, settings.max_resumes) == (10.0, "resume", 3)
    assert (settings.heartbeat_s, settings.max_message_chars) == (15.0, 32_000)
    assert (settings.log_format, settings.metrics_dir) == ("text", None)


def test_values_are_parsed_and_empty_ones_ignored() -> None:
    settings = Settings.from_env(
        {
            "CHATSVC_CHECKPOINT_MS": "250",
            "CHATSVC_CHECKPOINT_MIN_MS": "50",
            "CHATSVC_LEASE_S": "2.5",
            "CHATSVC_ORPHAN_POLICY": "interrupt",
            "CHATSVC_HEARTBEAT_S": "",
        }
    )
    assert (settings.checkpoint_ms, settings.checkpoint_min_ms, settings.coalesce_ms) == (
        250,
        50,
        50,
    )
    # Unset, the coalescing bound follows the checkpoint interval; 0 turns coalescing off.
    assert Settings.from_env({"CHATSVC_CHECKPOINT_MS": "40"}).coalesce_ms == 40
    assert Settings.from_env({"CHATSVC_CHECKPOINT_MIN_MS": "0"}).coalesce_ms == 0
    assert (settings.lease_s, settings.orphan_policy) == (2.5, "interrupt")
    assert settings.heartbeat_s == 15.0


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CHATSVC_CHECKPOINT_MS": "soon"}, "CHATSVC_CHECKPOINT_MS='soon'"),
        ({"CHATSVC_CHECKPOINT_MIN_MS": "-1"}, "CHATSVC_CHECKPOINT_MIN_MS='-1'"),
        ({"CHATSVC_CHECKPOINT_MIN_MS": "101"}, "CHATSVC_CHECKPOINT_MIN_MS must not exceed"),
        ({"CHATSVC_CHECKPOINT_MS": "0"}, "CHATSVC_CHECKPOINT_MS must be at least 1"),
        ({"CHATSVC_LEASE_S": "0.2"}, "CHATSVC_LEASE_S must be at least three"),
        ({"CHATSVC_ORPHAN_POLICY": "retry"}, "CHATSVC_ORPHAN_POLICY must be one of"),
        ({"CHATSVC_MODELS": "openai/a,,openai/b"}, "CHATSVC_MODELS='openai/a,,openai/b'"),
        (
            {"CHATSVC_MODELS": "openai/a"},
            "CHATSVC_MODEL='chatsvc/offline' is not in CHATSVC_MODELS",
        ),
        ({"CHATSVC_LOG_FORMAT": "xml"}, "CHATSVC_LOG_FORMAT must be one of text, json"),
    ],
)
def test_an_impossible_value_is_refused_by_name(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")) as raised:
        Settings.from_env(env)
    assert named in str(raised.value)


def test_models_are_a_comma_separated_list_that_includes_the_default() -> None:
    assert Settings.from_env({}).models == ()
    settings = Settings.from_env(
        {"CHATSVC_MODEL": "openai/b", "CHATSVC_MODELS": " openai/a, openai/b ,openai/a"}
    )
    assert settings.models == ("openai/a", "openai/b")
