"""The load: concurrent answers followed over SSE, idle subscribers, and what the clients saw.

Answers come in two shapes (`Shape`). A real model's (`clock=1`): token-sized
chunks after one stamp "<T0>", T0 the CLOCK_MONOTONIC nanoseconds (system-wide
on Linux) when the fake LLM sent it, chunk k due at T0 + k·delay; the client
knows the offset of every text it receives (chatsvc merges chunks into deltas,
and a `message` event may carry text already committed), so for each chunk
whose last character arrived it records receive minus due time. The old shape
(`stamp=1`): every chunk starts with "<N>", its emit time; the client parses
every stamp in each text it receives and records receive minus emit. Receive
times are taken when the bytes came off the socket. Each answer's time to first
text is measured too: from just before the request that starts it (chatsvc's
`POST /messages`, the baseline's `POST /stream`) to its first text.

A chatsvc answer is followed the way the conversation page does it: subscribe to
`GET /api/conversations/{id}/stream` (on one instance), then `POST` the message
(on another, or the same), and read until the answer's `done`, checking that the
deltas join with no gap and no overlap. A baseline answer is one `POST /stream`.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.lock

from benchmarks import wire
from benchmarks.meter import percentile

STAMP = re.compile(r"<(\d{6,})>")
NS_PER_MS = 1_000_000


def prompt(
    chunks: int, size: int, delay: float, seed: str, *, stamp: bool = True, clock: bool = False
) -> str:
    """The user message that scripts the fake LLM's answer."""
    text = f"@fake chunks={chunks} size={size} delay={delay:g} seed={seed}"
    if clock:
        return text + " clock=1"
    return text + " stamp=1" if stamp else text


@dataclass(frozen=True)
class Shape:
    """What each answer of a load run is: `chunks` text chunks of `size` characters, `delay`
    seconds apart; clocked (a real model's shape, `clock=1`) or stamped (`stamp=1`)."""

    chunks: int
    size: int
    delay: float
    clock: bool = False

    @property
    def answer_s(self) -> float:
        """How long one answer streams."""
        return self.chunks * self.delay

    @property
    def rate(self) -> float:
        """Chunks per second of one answer."""
        return 1 / self.delay

    def prompt(self, seed: str) -> str:
        """The user message that asks for one answer of this shape."""
        return prompt(self.chunks, self.size, self.delay, seed, clock=self.clock)

    def tracker(self, samples: Samples) -> Tracker:
        """What follows one answer of this shape."""
        return ClockTracker(samples, self) if self.clock else StampTracker(samples)


@dataclass
class Samples:
    """What the clients of one run measured."""

    emitted: array[int] = field(default_factory=lambda: array("q"))
    latency: array[int] = field(default_factory=lambda: array("q"))
    rates: list[float] = field(default_factory=list)  # chunks/s of each finished stream
    sent: array[int] = field(default_factory=lambda: array("q"))  # each answer's request
    first_text: array[int] = field(default_factory=lambda: array("q"))  # and its first text
    chars: int = 0
    ok: int = 0
    failed: int = 0
    refused: int = 0  # answers the server refused for now (503 Retry-After)
    errors: list[str] = field(default_factory=list)

    def record(self, text: str, received_ns: int) -> list[int]:
        """Record the stamps in text received at `received_ns`; returns their emit times."""
        self.chars += len(text)
        stamps = [int(m) for m in STAMP.findall(text)]
        for emitted in stamps:
            self.add(emitted, received_ns)
        return stamps

    def add(self, emitted_ns: int, received_ns: int) -> None:
        """Record one chunk: when it was emitted (or due), when it was received."""
        self.emitted.append(emitted_ns)
        self.latency.append(received_ns - emitted_ns)

    def fail(self, error: BaseException | str) -> None:
        """Count a stream that did not end well (keeping the first few reasons)."""
        self.failed += 1
        if len(self.errors) < 5:
            self.errors.append(str(error) or type(error).__name__)

    @property
    def chunks(self) -> int:
        """Chunks received (one stamp each)."""
        return len(self.latency)

    def in_window(self, start_ns: int, end_ns: int) -> tuple[list[float], int]:
        """Latencies (ms) of the chunks emitted in [start, end), and how many chunks were
        received in it."""
        latencies = []
        received = 0
        for emitted, lat in zip(self.emitted, self.latency, strict=True):
            if start_ns <= emitted < end_ns:
                latencies.append(lat / NS_PER_MS)
            if start_ns <= emitted + lat < end_ns:
                received += 1
        return latencies, received

    def timeline(self, start_ns: int, end_ns: int) -> list[float]:
        """The worst latency (ms) of the chunks emitted in each second of the window: a
        stall (a full garbage collection, a slow commit) shows as one high second."""
        worst: dict[int, int] = {}
        for emitted, lat in zip(self.emitted, self.latency, strict=True):
            if start_ns <= emitted < end_ns:
                second = (emitted - start_ns) // 1_000_000_000
                worst[second] = max(worst.get(second, 0), lat)
        return [round(worst.get(s, 0) / NS_PER_MS) for s in range(max(worst, default=-1) + 1)]

    def time_to_first_text(self, start_ns: int, end_ns: int) -> list[float]:
        """Time to first text (ms) of the answers asked in [start, end)."""
        return [
            (first - sent) / NS_PER_MS
            for sent, first in zip(self.sent, self.first_text, strict=True)
            if start_ns <= sent < end_ns
        ]

    def summary(self, start_ns: int = 0, end_ns: int = 2**63 - 1) -> dict[str, Any]:
        """Counts, and latency percentiles of the chunks emitted in the window (and time to
        first text of the answers asked in it)."""
        window, received = self.in_window(start_ns, end_ns)
        firsts = self.time_to_first_text(start_ns, end_ns)
        return {
            "answers_ok": self.ok,
            "answers_failed": self.failed,
            "answers_refused": self.refused,
            "errors": self.errors,
            "chunks": self.chunks,
            "chunks_received_in_window": received,
            "latency_samples": len(window),
            "p50_ms": percentile(window, 50),
            "p99_ms": percentile(window, 99),
            "max_ms": max(window) if window else None,
            "rate_per_stream": percentile(self.rates, 50),
            "first_text_samples": len(firsts),
            "first_text_p50_ms": percentile(firsts, 50),
            "first_text_p99_ms": percentile(firsts, 99),
        }


class Tracker:
    """One answer as a client sees it: fed every text of the answer with its offset and
    receive time, it records delivery samples, its time to first text and achieved rate."""

    def __init__(self, samples: Samples) -> None:
        self.samples = samples
        self.sent_ns = 0  # just before the request that starts the answer
        self.first_text_ns = 0

    def text(self, offset: int, text: str, received_ns: int) -> None:
        """Text of the answer from `offset` on, received at `received_ns`."""
        if text and not self.first_text_ns:
            self.first_text_ns = received_ns
        self.samples.chars += len(text)
        self._record(offset, text, received_ns)

    def _record(self, offset: int, text: str, received_ns: int) -> None:
        raise NotImplementedError

    def rate(self) -> float | None:
        """Chunks per second this answer was delivered at (None: too few to tell)."""
        raise NotImplementedError

    def finished(self) -> None:
        """The answer ended well: count it, with its rate and its time to first text."""
        self.samples.ok += 1
        rate = self.rate()
        if rate is not None:
            self.samples.rates.append(rate)
        if self.sent_ns and self.first_text_ns:
            self.samples.sent.append(self.sent_ns)
            self.samples.first_text.append(self.first_text_ns)


class StampTracker(Tracker):
    """A stamped answer (`stamp=1`): every chunk carries its emit time; the rate is taken
    from the first and last emit time."""

    def __init__(self, samples: Samples) -> None:
        super().__init__(samples)
        self.first = 0
        self.last = 0
        self.count = 0

    def _record(self, offset: int, text: str, received_ns: int) -> None:
        stamps = [int(m) for m in STAMP.findall(text)]
        for emitted in stamps:
            self.samples.add(emitted, received_ns)
        if stamps:
            self.first = self.first or stamps[0]
            self.last = stamps[-1]
            self.count += len(stamps)

    def rate(self) -> float | None:
        if self.count < 2 or self.last <= self.first:
            return None
        return (self.count - 1) / ((self.last - self.first) / 1e9)


class ClockTracker(Tracker):
    """A clocked answer (`clock=1`): the stamp "<T0>" (chunk 0), then chunk k ≥ 1 of `size`
    characters due at T0 + k·delay. A chunk is received when its last character is; the
    rate is taken from the receive times of the first and last text received."""

    def __init__(self, samples: Samples, shape: Shape) -> None:
        super().__init__(samples)
        self.shape = shape
        self.delay_ns = round(shape.delay * 1e9)
        self.head = ""  # the text before the stamp is whole
        self.stamp_len = 0
        self.t0 = 0
        self.first: tuple[int, int] | None = None  # (chunk, received) of the first text chunk
        self.last: tuple[int, int] | None = None

    def _record(self, offset: int, text: str, received_ns: int) -> None:
        if not self.stamp_len:
            self.head += text
            end = self.head.find(">")
            if end < 0:
                return
            self.stamp_len, self.t0 = end + 1, int(self.head[1:end])
        completed = self.completed(offset, offset + len(text))
        for k in completed:
            self.samples.add(self.t0 + k * self.delay_ns, received_ns)
        if completed and completed[-1] >= 1:
            self.first = self.first or (completed[-1], received_ns)
            self.last = (completed[-1], received_ns)

    def completed(self, start: int, end: int) -> list[int]:
        """The chunks whose last character is at an offset in [start, end)."""
        size, stamp = self.shape.size, self.stamp_len
        chunks = [0] if start <= stamp - 1 < end else []
        # chunk k ≥ 1 ends at offset stamp + k·size - 1
        low = max(1, -(-(start - stamp + 1) // size))
        high = min(self.shape.chunks, (end - stamp) // size)
        return chunks + list(range(low, high + 1))

    def rate(self) -> float | None:
        if self.first is None or self.last is None or self.last[1] <= self.first[1]:
            return None
        return (self.last[0] - self.first[0]) / ((self.last[1] - self.first[1]) / 1e9)


def _events(response: wire.Response, parser: wire.SseParser) -> tuple[int, list[wire.Event]]:
    received_ns, data = response.read_some()
    if not data and response.finished:
        raise wire.HttpError("the stream ended before `done`")
    return received_ns, parser.feed(data)


def send_message(
    base: str, token: str, conversation_id: str, content: str, timeout: float = 10.0
) -> str:
    """POST a user message; the id of the answer it starts."""
    sent = wire.call(
        base,
        "POST",
        f"/api/conversations/{conversation_id}/messages",
        token=token,
        body={"content": content},
        timeout=timeout,
    )
    return str(sent["assistant_message"]["id"])


def send_when_admitted(
    base: str, token: str, conversation_id: str, content: str, timeout: float = 10.0
) -> str:
    """send_message, waiting out `503 unavailable` as its Retry-After says (a worker still
    busy with earlier answers, or with starting up), for at most 30 seconds."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return send_message(base, token, conversation_id, content, timeout)
        except wire.Busy as exc:
            if time.monotonic() + exc.retry_after > deadline:
                raise
            time.sleep(exc.retry_after)


def chatsvc_answer(
    send_base: str,
    follow_base: str,
    token: str,
    conversation_id: str,
    shape: Shape,
    *,
    seed: str,
    samples: Samples,
    timeout: float,
) -> None:
    """Follow a conversation on one instance, send a message on another, read to `done`."""
    content = shape.prompt(seed)
    tracker = shape.tracker(samples)
    auth = {"Authorization": f"Bearer {token}"}
    path = f"/api/conversations/{conversation_id}/stream"
    sent: list[gevent.Greenlet] = []
    failed: list[Exception] = []
    with wire.open_request(follow_base, "GET", path, headers=auth, timeout=timeout) as response:
        if response.status != 200:
            raise wire.HttpError(f"GET {path}: {response.status}")

        def post() -> None:
            try:
                tracker.sent_ns = time.monotonic_ns()
                send_message(send_base, token, conversation_id, content, timeout)
            except Exception as exc:
                failed.append(exc)
                response.close()  # no `done` will come: stop the reader

        def send() -> None:
            # The follower is subscribed before its first byte: send now. The POST
            # runs beside the reader, so that no chunk waits for its response.
            sent.append(gevent.spawn(post))

        try:
            with gevent.Timeout(timeout, AssertionError(f"no `done` within {timeout:g} s")):
                _read_answer(response, send, tracker)
        except Exception:
            if failed:
                raise failed[0] from None
            raise
        sent[0].join(timeout=timeout)
        if failed:
            raise failed[0]
        tracker.finished()


def _read_answer(response: wire.Response, send: Callable[[], None], tracker: Tracker) -> None:
    """Read a conversation stream: send once subscribed, then the answer's text to `done`."""
    parser = wire.SseParser()
    sent = False
    answer: str | None = None
    offset = 0
    while True:
        received_ns, events = _events(response, parser)
        for event in events:
            if event.retry is not None and not sent:
                send()
                sent = True
            if not event.data:
                continue
            data = json.loads(event.data)
            if event.event == "message" and data["role"] == "assistant":
                answer, offset = data["id"], data["content_length"]
                tracker.text(0, data["content"], received_ns)
                if data["status"] != "streaming":  # announced after it ended: no `done`
                    _check_ending(data["status"], data["content_length"], offset, data)
                    return
            elif event.event == "delta" and data["message_id"] == answer:
                if data["offset"] != offset:
                    raise AssertionError(f"gap or overlap at {offset}: {data['offset']}")
                tracker.text(offset, data["text"], received_ns)
                offset += len(data["text"])
            elif event.event == "done" and data["message_id"] == answer:
                _check_ending(data["status"], data["content_length"], offset, data)
                return


def _check_ending(status: str, length: int, offset: int, data: Any) -> None:
    if status != "completed" or length != offset:
        raise AssertionError(f"answer ended {status} at {offset}: {str(data)[:300]}")


def baseline_answer(
    base: str, shape: Shape, seed: str, *, samples: Samples, timeout: float
) -> None:
    """One baseline answer: POST /stream and read its SSE to `done`."""
    tracker = shape.tracker(samples)
    body = {"content": shape.prompt(seed)}
    tracker.sent_ns = time.monotonic_ns()
    with wire.open_request(base, "POST", "/stream", body=body, timeout=timeout) as response:
        if response.status != 200:
            raise wire.HttpError(f"POST /stream: {response.status}")
        parser = wire.SseParser()
        offset = 0
        while True:
            received_ns, events = _events(response, parser)
            for event in events:
                if event.event == "delta":
                    data = json.loads(event.data)
                    tracker.text(offset, data["text"], received_ns)
                    offset += len(data["text"])
                elif event.event == "done":
                    if json.loads(event.data)["content_length"] != offset:
                        raise AssertionError("baseline: done does not match the deltas")
                    tracker.finished()
                    return


def drive(
    answer: Callable[[int, int], Callable[[], None] | None],
    slots: int,
    *,
    ramp_s: float,
    until: float,
    samples: Samples,
    timeout: float,
) -> None:
    """Run `slots` clients, started evenly over `ramp_s`, each asking its answers back to back
    (`answer(slot, n)`, None when it has no more) and starting none after `until` (monotonic);
    wait for all of them, at most `timeout` seconds."""

    def client(slot: int) -> None:
        for n in itertools.count():
            job = answer(slot, n)
            if job is None:
                return
            try:
                job()
            except wire.Busy as exc:
                samples.refused += 1
                time.sleep(exc.retry_after)  # as a client should, and no busy loop
            except Exception as exc:
                samples.fail(exc)
                time.sleep(0.5)  # a failing server must not turn this into a busy loop
            if time.monotonic() >= until:
                return

    greenlets = [gevent.spawn_later(i * ramp_s / slots, client, i) for i in range(slots)]
    gevent.joinall(greenlets, timeout=timeout)
    late = [g for g in greenlets if not g.dead]
    for _ in late:
        samples.fail("no `done` before the run's time limit")
    gevent.killall(late, block=True, timeout=5)


@dataclass
class Held:
    """One idle subscriber: did it connect, is it open, what did it see."""

    connected: bool = False
    pings: int = 0
    open: bool = True
    done: int = 0  # answers received whole
    error: str | None = None


def hold_subscriber(
    base: str,
    token: str,
    conversation_id: str,
    *,
    held: Held,
    gate: gevent.lock.Semaphore,
    samples: Samples,
    timeout: float,
) -> None:
    """Open a conversation stream and keep reading until killed; count pings and answers."""
    auth = {"Authorization": f"Bearer {token}"}
    path = f"/api/conversations/{conversation_id}/stream"
    response: wire.Response | None = None
    try:
        parser = wire.SseParser()
        pending: list[tuple[int, wire.Event]] = []
        with gate:  # bounds the connections being opened at once, not those held
            response = wire.open_request(base, "GET", path, headers=auth, timeout=timeout)
            if response.status != 200:
                raise wire.HttpError(f"GET {path}: {response.status}")
            while not held.connected:
                received_ns, events = _events(response, parser)
                held.connected = any(e.retry == 1000 for e in events)
                pending += [(received_ns, e) for e in events]
        while True:
            for received_ns, event in pending:
                if event.comment and not event.data:
                    held.pings += 1
                elif event.event == "message":
                    message = json.loads(event.data)
                    samples.record(message["content"], received_ns)
                    # An answer announced after it ended comes whole, with no `done`.
                    held.done += message["role"] == "assistant" and message["status"] != "streaming"
                elif event.event == "delta":
                    samples.record(json.loads(event.data)["text"], received_ns)
                elif event.event == "done":
                    held.done += 1
            received_ns, events = _events(response, parser)
            pending = [(received_ns, e) for e in events]
    except Exception as exc:
        held.error = str(exc) or type(exc).__name__
    finally:
        held.open = False
        if response is not None:
            response.close()
