"""What the model is asked: the conversation, or the continuation of a cut-off answer.

Kept apart from chatsvc.llm so that code that only needs the wording (the fake
LLM) does not import litellm.
"""

from __future__ import annotations

CONTINUE_INSTRUCTION = (
    "Your previous answer was cut off. Continue it exactly where it stopped: do not "
    "repeat anything already written and do not comment on the interruption."
)


def prompt_for(history: list[tuple[str, str]], partial: str | None) -> list[dict[str, str]]:
    """The chat messages for an answer; with `partial`, ask the model to continue it."""
    messages = [{"role": role, "content": text} for role, text in history if text]
    if partial:
        messages.append({"role": "assistant", "content": partial})
        messages.append({"role": "user", "content": CONTINUE_INSTRUCTION})
    return messages
