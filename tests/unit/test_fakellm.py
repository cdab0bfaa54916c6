"""The fake LLM's `clock=1` directive: a stamp first, then text chunks on an absolute schedule."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from chatsvc import fakellm

DELAY_NS = 20_000_000


class FakeClock:
    """Stands in for the `time` module: sleeping moves the clock, nothing else does."""

    def __init__(self) -> None:
        self.now = 1_000_000_000

    def monotonic_ns(self) -> int:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += round(seconds * 1e9)

    def time(self) -> float:
        return self.now / 1e9


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(fakellm, "time", fake)
    return fake


def _answer(question: str) -> Iterator[dict[str, Any]]:
    """The streamed chunks' payloads, as the fake LLM yields them."""
    body = json.dumps({"model": "fake", "messages": [{"role": "user", "content": question}]})
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/v1/chat/completions",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body.encode()),
    }
    for raw in fakellm.FakeLLM()(environ, lambda status, headers: None):
        data = raw.decode().removeprefix("data: ").strip()
        if data != "[DONE]":
            yield json.loads(data)


def _content(payload: dict[str, Any]) -> str | None:
    choices = payload["choices"]
    return choices[0]["delta"].get("content") if choices else None


def test_a_clocked_answer_is_the_stamp_then_its_chunks_each_sent_on_schedule(
    clock: FakeClock,
) -> None:
    question = "@fake clock=1 chunks=5 size=4 delay=0.02 seed=s stamp=1"
    sent: list[tuple[str, int]] = []
    usage = None
    for payload in _answer(question):
        text = _content(payload)
        if text:
            sent.append((text, clock.now))
        usage = payload.get("usage") or usage
    (stamp, t0), *chunks = sent
    assert stamp == f"<{t0}>"
    texts = [text for text, _ in chunks]
    assert len(texts) == 5 and all(len(text) == 4 for text in texts)
    assert "".join(texts) == fakellm.script_text(fakellm.parse_directives(question))
    assert [at for _, at in chunks] == [t0 + k * DELAY_NS for k in range(1, 6)]
    assert usage is not None and usage["completion_tokens"] == 6


def test_a_late_clocked_chunk_goes_at_once_and_the_schedule_does_not_drift(
    clock: FakeClock,
) -> None:
    sent: list[int] = []
    t0 = 0
    for payload in _answer("@fake clock=1 chunks=6 size=4 delay=0.02 seed=late"):
        text = _content(payload)
        if not text:
            continue
        if text.startswith("<"):
            t0 = clock.now
            continue
        sent.append(clock.now)
        if len(sent) == 1:
            clock.now += 3 * DELAY_NS + 5_000_000  # the sender stalls after chunk 1
    late = t0 + 4 * DELAY_NS + 5_000_000  # chunks 2-4 fell due during the stall
    assert sent == [t0 + DELAY_NS, late, late, late, t0 + 5 * DELAY_NS, t0 + 6 * DELAY_NS]
