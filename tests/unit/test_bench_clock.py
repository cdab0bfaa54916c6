"""The load client's view of a clocked answer: which chunks each received text completes."""

from __future__ import annotations

from benchmarks.load import ClockTracker, Samples, Shape

SHAPE = Shape(chunks=5, size=4, delay=0.02, clock=True)
T0 = 1_000_000_000
STAMP = f"<{T0}>"
DELAY_NS = 20_000_000


def test_each_chunk_counts_when_its_last_character_arrives_against_its_due_time() -> None:
    samples = Samples()
    tracker = SHAPE.tracker(samples)
    assert isinstance(tracker, ClockTracker)
    text = STAMP + "abcdefghijklmnopqrst"
    start = len(STAMP)
    tracker.text(0, text[:start], T0 + 1_000)  # the stamp: chunk 0
    tracker.text(start, text[start : start + 3], T0 + DELAY_NS)  # chunk 1 not whole yet
    tracker.text(start + 3, text[start + 3 : start + 9], T0 + 3 * DELAY_NS)  # ends 1 and 2
    tracker.text(start + 9, text[start + 9 :], T0 + 5 * DELAY_NS + 7)  # ends 3, 4 and 5
    assert list(samples.emitted) == [T0 + k * DELAY_NS for k in range(6)]
    assert list(samples.latency) == [
        1_000,
        2 * DELAY_NS,
        DELAY_NS,
        2 * DELAY_NS + 7,
        DELAY_NS + 7,
        7,
    ]
    assert tracker.first_text_ns == T0 + 1_000


def test_a_message_event_with_committed_text_completes_every_chunk_in_it() -> None:
    samples = Samples()
    tracker = SHAPE.tracker(samples)
    tracker.sent_ns = T0 - 5_000_000
    tracker.text(0, STAMP + "abcdefgh", T0 + 2 * DELAY_NS)  # stamp, chunks 1 and 2 at once
    tracker.text(len(STAMP) + 8, "ijklmnopqrst", T0 + 5 * DELAY_NS)
    assert list(samples.emitted) == [T0 + k * DELAY_NS for k in range(6)]
    assert list(samples.latency)[:3] == [2 * DELAY_NS, DELAY_NS, 0]
    tracker.finished()
    assert samples.ok == 1
    assert samples.rates == [(5 - 2) / (3 * DELAY_NS / 1e9)]
    assert samples.summary()["first_text_p50_ms"] == 5 + 2 * DELAY_NS / 1e6
