"""Which models a client may choose, and whether litellm can call them.

A client names a model only from the operator's list (`CHATSVC_MODELS`, or the
default model alone), and only one whose provider litellm can resolve: every
command that starts an answer calls `choose` before it writes anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chatsvc.config import Settings
from chatsvc.engine import llm
from chatsvc.errors import UnknownModel


@dataclass(frozen=True)
class Choice:
    """A model a client may name in a send; `default` is the one used when it names none."""

    id: str
    default: bool


def choices(settings: Settings) -> list[Choice]:
    """The models a client may choose, in the operator's order (`CHATSVC_MODELS`)."""
    return [Choice(name, name == settings.model) for name in settings.models or (settings.model,)]


def choose(settings: Settings, requested: str | None) -> str:
    """The model an answer is written by: the requested one, or the default; 422 unknown_model
    for one the operator did not list or whose provider litellm cannot resolve."""
    if requested is None:
        return settings.model
    allowed = settings.models or (settings.model,)
    if requested not in allowed:
        raise UnknownModel(
            f"The model {requested!r} is not available here; choose one of "
            f"{', '.join(allowed)} (GET /api/models), or send no model for the default."
        )
    if llm.provider_of(requested) is None:
        raise UnknownModel(f"litellm cannot tell which provider serves {requested!r}.")
    return requested


@dataclass
class Check:
    """What `chatsvc serve` found about the configured models before it started."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check(settings: Settings) -> Check:
    """Can litellm call the configured models: every provider resolvable (else an error), the
    default model's credentials present (else an error), the other models' (else a warning)."""
    found = Check()
    for name in settings.models or (settings.model,):
        if llm.provider_of(name) is None:
            found.errors.append(
                f"litellm cannot tell which provider serves the model {name!r}; write it as "
                "provider/model, e.g. openai/gpt-4o-mini."
            )
            continue
        missing = llm.missing_credentials(settings, name)
        if not missing:
            continue
        needs = (
            f"the model {name!r} needs {' and '.join(missing)} in the environment"
            " (or CHATSVC_LLM_API_KEY / CHATSVC_LLM_API_BASE)"
        )
        if name == settings.model:
            found.errors.append(f"the default model (CHATSVC_MODEL): {needs}.")
        else:
            found.warnings.append(f"{needs}; its answers will fail until it is set.")
    return found
