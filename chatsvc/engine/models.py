"""Which models a client may choose: the operator's list, or the default model alone."""

from __future__ import annotations

from dataclasses import dataclass

from chatsvc.config import Settings


@dataclass(frozen=True)
class Choice:
    """A model a client may name in a send; `default` is the one used when it names none."""

    id: str
    default: bool


def choices(settings: Settings) -> list[Choice]:
    """The models a client may choose, in the operator's order (`CHATSVC_MODELS`)."""
    return [Choice(name, name == settings.model) for name in settings.models or (settings.model,)]
