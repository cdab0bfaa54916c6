"""The load: concurrent answers followed over SSE, idle subscribers, and what the clients saw.

Every chunk the fake LLM sends carries its emit time (`stamp=1`: "<N>" with N the
CLOCK_MONOTONIC nanoseconds, system-wide on Linux). A client parses every stamp
in each text it receives (chatsvc merges chunks into deltas, and a `message`
event may carry text already committed) and records receive minus emit, with the
receive time taken when the bytes came off the socket.

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


def prompt(chunks: int, size: int, delay: float, seed: str, *, stamp: bool = True) -> str:
    """The user message that scripts the fake LLM's answer."""
    text = f"@fake chunks={chunks} size={size} delay={delay:g} seed={seed}"
    return text + " stamp=1" if stamp else text


@dataclass
class Samples:
    """What the clients of one run measured."""

    emitted: array[int] = field(default_factory=lambda: array("q"))
    latency: array[int] = field(default_factory=lambda: array("q"))
    rates: list[float] = field(default_factory=list)  # chunks/s of each finished stream
    chars: int = 0
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def record(self, text: str, received_ns: int) -> list[int]:
        """Record the stamps in text received at `received_ns`; returns their emit times."""
        self.chars += len(text)
        stamps = [int(m) for m in STAMP.findall(text)]
        for emitted in stamps:
            self.emitted.append(emitted)
            self.latency.append(received_ns - emitted)
        return stamps

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

    def summary(self, start_ns: int = 0, end_ns: int = 2**63 - 1) -> dict[str, Any]:
        """Counts, and latency percentiles of the chunks emitted in the window."""
        window, received = self.in_window(start_ns, end_ns)
        return {
            "answers_ok": self.ok,
            "answers_failed": self.failed,
            "errors": self.errors,
            "chunks": self.chunks,
            "chunks_received_in_window": received,
            "latency_samples": len(window),
            "p50_ms": percentile(window, 50),
            "p99_ms": percentile(window, 99),
            "max_ms": max(window) if window else None,
            "rate_per_stream": percentile(self.rates, 50),
        }


class _Stamps:
    """First and last emit time of one stream, for its achieved chunk rate."""

    def __init__(self) -> None:
        self.first = 0
        self.last = 0
        self.count = 0

    def add(self, stamps: list[int]) -> None:
        if stamps:
            self.first = self.first or stamps[0]
            self.last = stamps[-1]
            self.count += len(stamps)

    def rate(self) -> float | None:
        if self.count < 2 or self.last <= self.first:
            return None
        return (self.count - 1) / ((self.last - self.first) / 1e9)


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


def chatsvc_answer(
    send_base: str,
    follow_base: str,
    token: str,
    conversation_id: str,
    content: str,
    *,
    samples: Samples,
    timeout: float,
) -> None:
    """Follow a conversation on one instance, send a message on another, read to `done`."""
    auth = {"Authorization": f"Bearer {token}"}
    path = f"/api/conversations/{conversation_id}/stream"
    sent: list[gevent.Greenlet] = []
    failed: list[Exception] = []
    with wire.open_request(follow_base, "GET", path, headers=auth, timeout=timeout) as response:
        if response.status != 200:
            raise wire.HttpError(f"GET {path}: {response.status}")

        def post() -> None:
            try:
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
                stamps = _read_answer(response, send, samples)
        except Exception:
            if failed:
                raise failed[0] from None
            raise
        sent[0].join(timeout=timeout)
        if failed:
            raise failed[0]
        _finished(samples, stamps)


def _read_answer(response: wire.Response, send: Callable[[], None], samples: Samples) -> _Stamps:
    """Read a conversation stream: send once subscribed, then the answer's text to `done`."""
    stamps = _Stamps()
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
                stamps.add(samples.record(data["content"], received_ns))
                if data["status"] != "streaming":  # announced after it ended: no `done`
                    _check_ending(data["status"], data["content_length"], offset, data)
                    return stamps
            elif event.event == "delta" and data["message_id"] == answer:
                if data["offset"] != offset:
                    raise AssertionError(f"gap or overlap at {offset}: {data['offset']}")
                offset += len(data["text"])
                stamps.add(samples.record(data["text"], received_ns))
            elif event.event == "done" and data["message_id"] == answer:
                _check_ending(data["status"], data["content_length"], offset, data)
                return stamps


def _check_ending(status: str, length: int, offset: int, data: Any) -> None:
    if status != "completed" or length != offset:
        raise AssertionError(f"answer ended {status} at {offset}: {str(data)[:300]}")


def baseline_answer(base: str, content: str, *, samples: Samples, timeout: float) -> None:
    """One baseline answer: POST /stream and read its SSE to `done`."""
    stamps = _Stamps()
    body = {"content": content}
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
                    offset += len(data["text"])
                    stamps.add(samples.record(data["text"], received_ns))
                elif event.event == "done":
                    if json.loads(event.data)["content_length"] != offset:
                        raise AssertionError("baseline: done does not match the deltas")
                    _finished(samples, stamps)
                    return


def _finished(samples: Samples, stamps: _Stamps) -> None:
    samples.ok += 1
    rate = stamps.rate()
    if rate is not None:
        samples.rates.append(rate)


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
