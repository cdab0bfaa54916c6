"""ChatStream: hub events become AI SDK chunks in the layout's order, reading only when needed."""

from __future__ import annotations

import uuid
from typing import Any

from chatsvc.engine.events import Delta, Finished, ReasoningDelta
from chatsvc.engine.hub import Hub
from chatsvc.engine.messages import PartsFrom
from chatsvc.engine.positions import Position
from chatsvc.web.chat_stream import ChatStream

MESSAGE = uuid.uuid4()
CONVERSATION = uuid.uuid4()


class Answer:
    """A committed answer as the database would show it; counts the reads."""

    def __init__(self) -> None:
        self.text = ""
        self.reasoning = ""
        self.layout: list[dict[str, Any]] | None = None
        self.status = "streaming"
        self.reads = 0
        self.hub = Hub()
        self.heartbeat_s = 15.0

    def read(self, message_id: uuid.UUID, position: Position) -> PartsFrom:
        self.reads += 1
        return PartsFrom(
            message_id=message_id,
            conversation_id=CONVERSATION,
            status=self.status,
            epoch=1,
            content_length=len(self.text),
            reasoning_length=len(self.reasoning),
            tool_version=0,
            layout=self.layout,
            text=self.text[position.content :],
            reasoning=self.reasoning[position.reasoning :],
            parts=[],
            usage={"prompt_tokens": 1, "completion_tokens": 2},
            error=None,
        )


def stream_of(answer: Answer) -> tuple[ChatStream, list[Any]]:
    stream = ChatStream(answer, MESSAGE)  # type: ignore[arg-type]
    return stream, stream.begin()


def test_a_plain_answer_streams_as_one_text_part_without_reads() -> None:
    answer = Answer()
    answer.text = "Hello"
    stream, first = stream_of(answer)
    assert first == [
        {"type": "start", "messageId": str(MESSAGE)},
        {"type": "start-step"},
        {"type": "text-start", "id": "text-0"},
        {"type": "text-delta", "id": "text-0", "delta": "Hello"},
    ]
    answer.text += ", world"
    assert stream.on([Delta(CONVERSATION, MESSAGE, 3, 12, "lo, world")]) == [
        {"type": "text-delta", "id": "text-0", "delta": ", world"}
    ]
    assert answer.reads == 1  # the first read only
    answer.status = "completed"
    end = stream.on([Finished(CONVERSATION, MESSAGE, "completed", 12, None, None)])
    assert [c["type"] for c in end] == ["text-end", "finish-step", "message-metadata", "finish"]
    assert stream.ended


def test_kinds_interleaved_within_one_checkpoint_come_in_the_layout_order() -> None:
    answer = Answer()
    answer.text = "abcde"
    stream, _ = stream_of(answer)
    # One checkpoint: reasoning, then more text, in a new text part after it.
    answer.reasoning = "xyz"
    answer.text += "fghi"
    answer.layout = [
        {"type": "text", "step": 0, "start": 0},
        {"type": "reasoning", "step": 0, "start": 0},
        {"type": "text", "step": 0, "start": 5},
    ]
    batch = [
        Delta(CONVERSATION, MESSAGE, 5, 9, "fghi"),
        ReasoningDelta(CONVERSATION, MESSAGE, 0, 3, "xyz"),
    ]
    assert stream.on(batch) == [
        {"type": "text-end", "id": "text-0"},
        {"type": "reasoning-start", "id": "reasoning-0"},
        {"type": "reasoning-delta", "id": "reasoning-0", "delta": "xyz"},
        {"type": "reasoning-end", "id": "reasoning-0"},
        {"type": "text-start", "id": "text-5"},
        {"type": "text-delta", "id": "text-5", "delta": "fghi"},
    ]
    # Text that extends the last part now goes out from the event alone.
    reads = answer.reads
    answer.text += "jk"
    assert stream.on([Delta(CONVERSATION, MESSAGE, 9, 11, "jk")]) == [
        {"type": "text-delta", "id": "text-5", "delta": "jk"}
    ]
    assert answer.reads == reads


def test_a_new_step_closes_the_last_and_a_gap_is_read() -> None:
    answer = Answer()
    answer.reasoning = "think"
    answer.layout = [{"type": "reasoning", "step": 0, "start": 0}]
    stream, first = stream_of(answer)
    assert [c["type"] for c in first][1:] == ["start-step", "reasoning-start", "reasoning-delta"]
    answer.text = "answer"
    answer.layout.append({"type": "text", "step": 1, "start": 0})
    # The event lost its text (too large to carry): the stream reads it.
    assert stream.on([Delta(CONVERSATION, MESSAGE, 0, 6, None)]) == [
        {"type": "reasoning-end", "id": "reasoning-0"},
        {"type": "finish-step"},
        {"type": "start-step"},
        {"type": "text-start", "id": "text-0"},
        {"type": "text-delta", "id": "text-0", "delta": "answer"},
    ]
    # A delta already sent is dropped; one past a gap is read.
    assert stream.on([Delta(CONVERSATION, MESSAGE, 0, 6, "answer")]) == []
    answer.text += "!!"
    reads = answer.reads
    assert stream.on([Delta(CONVERSATION, MESSAGE, 7, 8, "!")]) == [
        {"type": "text-delta", "id": "text-0", "delta": "!!"}
    ]
    assert answer.reads == reads + 1


def test_endings_by_status() -> None:
    for status, last in [
        ("completed", {"type": "finish", "finishReason": "stop"}),
        ("interrupted", {"type": "finish", "finishReason": "interrupted"}),
        ("cancelled", {"type": "abort", "reason": "cancelled"}),
        ("failed", {"type": "error", "errorText": "The answer failed."}),
    ]:
        answer = Answer()
        answer.status = status
        stream, first = stream_of(answer)
        assert first[-2] == {
            "type": "message-metadata",
            "messageMetadata": {
                "status": status,
                "usage": {"prompt_tokens": 1, "completion_tokens": 2},
                "content_length": 0,
            },
        }
        assert first[-1] == last and stream.ended
