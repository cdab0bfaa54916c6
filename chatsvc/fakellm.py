"""A fake OpenAI-compatible chat server for tests and the benchmark (never used in production).

It speaks just enough of POST /v1/chat/completions with stream=true for litellm's
real OpenAI path. What it answers is scripted by directives in the last user
message, e.g. "@fake chunks=40 size=3 delay=0.02 alphabet=mixed fail_after=10":

    chunks      number of content chunks (default 20)
    size        code points per chunk (default 4)
    delay       seconds between chunks (default 0.01)
    alphabet    ascii | mixed (emoji, ZWJ sequences, CJK, combining marks)
    seed        varies the text (default: the directives themselves)
    say         1 to answer with the message's own text before "@fake" (in
                chunks of `size`, `chunks` ignored): scripted Markdown for the page
    fail_after  drop the connection after this many chunks
    hang_after  stop sending (but keep the connection) after this many chunks
    usage       0 to send no usage chunk
    stamp       1 to start each chunk with "<N>", N = CLOCK_MONOTONIC in ns when it
                is sent (system-wide, so another process can measure delivery
                latency); the chunk is at least as long as the stamp
    clock       1 for a real model's shape with a clock: the answer's first content
                chunk is exactly the stamp "<T0>" (T0 = CLOCK_MONOTONIC ns when
                it is sent, at once, with no delay before it); then come the
                `chunks` text chunks (of `size` code points; `chunks` does not
                count the stamp), chunk k (k >= 1) sent on an absolute schedule
                at T0 + k * delay (a late chunk is sent at once, and the next one
                keeps the schedule: no drift). So a client knows when every
                character offset o was due: chunk 0 if o < len(stamp), else
                chunk 1 + (o - len(stamp)) // size. Overrides `stamp`; a clocked
                answer that chatsvc asks to continue starts again from its first
                text chunk (a fresh stamp, no schedule kept across calls)
    reasoning   chunks of reasoning (`delta.reasoning_content`) before each
                model call's content or tool calls (default 0)
    calls       tool calls, `name:{json args};name2:{...}` (no spaces): the model
                calls them all in one step, streaming the arguments in
                fragments of `size` characters, then answers with its text once
                the prompt holds the results of `steps` such steps
    steps       how many steps of tool calls before the text (default 1)
    repeat      when asked to continue a partial answer, first repeat its last N
                code points (as real models sometimes do at the seam)
    echo        1: the answer is the prompt itself, as JSON: a list of
                [role, content] for each message it was sent (so a test can
                read which messages a prompt held)
    stall_step  the first request for this model call step (of this question)
                waits before it answers, until `stall` seconds pass (default
                3600) or `release` is set; later requests for it do not, so a
                test can kill a process while its model call is in flight and
                watch another make it again (`stalled` is set meanwhile)
    wait        seconds every request waits before it is answered at all (a
                provider too slow for chatsvc's timeout)
    status      answer with this HTTP status and an OpenAI-style error body instead
                (401, 403, 404, 429, 500, 503 ...), after any stall; `message` (with
                `_` for spaces) is the error's message

Chunk counts for fail_after and hang_after include reasoning and argument
fragments (and a clocked answer's stamp). The answer is a pure function of the
directives and of how many tool steps the prompt already holds (except stamps),
so when chatsvc asks it to continue a partial answer it continues the same text
from that point.
"""

from __future__ import annotations

import argparse
import http
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from chatsvc.engine.prompts import CONTINUE_INSTRUCTION

ASCII = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ .,;:!?0123456789\n"
MIXED = [
    *"abcdef ghij klmn ",
    "\n",
    "é",
    "e\u0301",
    "n\u0303",
    "漢",
    "字",
    "中",
    "文",
    "😀",
    "🌍",
    "👩\u200d👩\u200d👧",
    "🇫🇷",
    "ß",
    "Ω",
    "\u2028",
    '"',
    "\\",
    "<b>",
    "&amp;",
]


def parse_directives(content: str) -> dict[str, str]:
    """The key=value directives after '@fake' in a message."""
    directives: dict[str, str] = {}
    if "@fake" not in content:
        return directives
    for word in content.split("@fake", 1)[1].split():
        key, sep, value = word.partition("=")
        if sep:
            directives[key] = value
    return directives


def script_text(directives: dict[str, str], question: str = "") -> str:
    """The full answer the directives describe (for `say`, of the question they end)."""
    if directives.get("say") == "1":
        return question.split("@fake", 1)[0].strip()
    chunks = int(directives.get("chunks", 20))
    size = int(directives.get("size", 4))
    rng = random.Random(directives.get("seed", json.dumps(directives, sort_keys=True)))
    if directives.get("alphabet") == "mixed":
        pieces = [rng.choice(MIXED) for _ in range(chunks * size)]
        text = "".join(pieces)
        # Trim to exactly chunks*size code points so chunking is predictable.
        return text[: chunks * size]
    return "".join(rng.choice(ASCII) for _ in range(chunks * size))


def script_reasoning(directives: dict[str, str], step: int) -> str:
    """The reasoning of one model call (step 0 is the first call of an answer)."""
    chunks = int(directives.get("reasoning", 0))
    size = int(directives.get("size", 4))
    rng = random.Random(f"reasoning {step} " + json.dumps(directives, sort_keys=True))
    return "".join(rng.choice(ASCII) for _ in range(chunks * size))


def script_calls(directives: dict[str, str]) -> list[tuple[str, str]]:
    """The (name, arguments text) of the tool calls each step makes."""
    raw = directives.get("calls", "")
    calls = []
    for item in raw.split(";") if raw else []:
        name, _, arguments = item.partition(":")
        calls.append((name, arguments or "{}"))
    return calls


def tool_call_id(step: int, index: int) -> str:
    """The id the fake gives a call: unique within an answer."""
    return f"call_{step}_{index}"


def tool_steps_done(messages: list[dict[str, Any]]) -> int:
    """How many steps of tool calls the prompt holds since the question was asked."""
    done = 0
    for message in reversed(messages):
        if message["role"] == "user" and message.get("content") != CONTINUE_INSTRUCTION:
            break
        if message["role"] == "assistant" and message.get("tool_calls"):
            done += 1
    return done


def split(text: str, size: int) -> list[str]:
    """Chunks of `size` code points (which may split a grapheme, as real tokenizers do)."""
    return [text[i : i + size] for i in range(0, len(text), size)]


class FakeLLM:
    """The WSGI app; `requests` records every request body it received."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.default: dict[str, str] = {}
        self.stalled = threading.Event()
        self.release = threading.Event()
        self._stalls: set[tuple[str, int]] = set()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        if environ["REQUEST_METHOD"] != "POST" or not environ["PATH_INFO"].endswith(
            "/chat/completions"
        ):
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return iter([b'{"error": {"message": "not found"}}'])
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(length))
        with self.lock:
            self.requests.append(body)
        return self._stream(body, start_response)

    def _stream(self, body: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        messages = body["messages"]
        question = next(
            (
                m["content"]
                for m in reversed(messages)
                if m["role"] == "user" and m["content"] != CONTINUE_INSTRUCTION
            ),
            "",
        )
        directives = {**self.default, **parse_directives(question)}
        size = int(directives.get("size", 4))
        step = tool_steps_done(messages)
        if directives.get("stall_step") == str(step) and self._first(question, step):
            self.stalled.set()
            self.release.wait(float(directives.get("stall", 3600)))
        if "wait" in directives:
            time.sleep(float(directives["wait"]))
        if "status" in directives:
            return _refuse(int(directives["status"]), directives, start_response)
        deltas: list[dict[str, Any]] = [
            {"reasoning_content": piece}
            for piece in split(script_reasoning(directives, step), size)
        ]
        calls = script_calls(directives)
        if calls and step < int(directives.get("steps", 1)):
            deltas += _call_deltas(calls, step, size)
            finish = "tool_calls"
        else:
            text = script_text(directives, question)
            if directives.get("echo") == "1":
                text = json.dumps([[m["role"], m.get("content")] for m in messages])
            if messages and messages[-1]["content"] == CONTINUE_INSTRUCTION:
                partial = messages[-2]["content"] or ""
                text = text[len(partial) :] if text.startswith(partial) else text
                repeat = int(directives.get("repeat", 0))
                text = (partial[-repeat:] if repeat else "") + text
            if directives.get("clock") == "1":
                deltas.append({CLOCK: True})  # the stamp, made when it is sent
            deltas += [{"content": chunk} for chunk in split(text, size)]
            finish = "stop"
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return self._events(
            deltas, finish, directives, body.get("model", "fake"), len(json.dumps(messages))
        )

    def _first(self, question: str, step: int) -> bool:
        with self.lock:
            first = (question, step) not in self._stalls
            self._stalls.add((question, step))
            return first

    def _events(
        self,
        deltas: list[dict[str, Any]],
        finish: str,
        directives: dict[str, str],
        model: str,
        prompt_chars: int,
    ) -> Iterator[bytes]:
        delay = float(directives.get("delay", 0.01))
        fail_after = int(directives.get("fail_after", -1))
        hang_after = int(directives.get("hang_after", -1))
        stamp = directives.get("stamp") == "1"
        created = int(time.time())

        def event(
            delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None
        ) -> bytes:
            payload: dict[str, Any] = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
                if usage is None
                else [],
            }
            if usage is not None:
                payload["usage"] = usage
            return f"data: {json.dumps(payload)}\n\n".encode()

        yield event({"role": "assistant", "content": ""})
        schedule: Schedule | None = None
        for index, delta in enumerate(deltas):
            if index == fail_after:
                raise ConnectionResetError("fake provider dropped the connection")
            if index == hang_after:
                time.sleep(3600)
            if delta.get(CLOCK):
                schedule = Schedule(time.monotonic_ns(), delay)
                yield event({"content": f"<{schedule.t0}>"})
                continue
            if schedule is not None and "content" in delta:
                schedule.wait_next()
                yield event(delta)
                continue
            if delay:
                time.sleep(delay)
            if stamp and "content" in delta:
                mark = f"<{time.monotonic_ns()}>"
                yield event({"content": mark + delta["content"][len(mark) :]})
            else:
                yield event(delta)
        yield event({}, finish=finish)
        if directives.get("usage", "1") != "0":
            usage = {
                "prompt_tokens": prompt_chars // 4,
                "completion_tokens": len(deltas),
                "total_tokens": prompt_chars // 4 + len(deltas),
            }
            yield event({}, usage=usage)
        yield b"data: [DONE]\n\n"


CLOCK = "clock"  # marks where a clocked answer's stamp goes among the deltas


class Schedule:
    """A clocked answer's absolute schedule: text chunk k is due at t0 + k * delay."""

    def __init__(self, t0: int, delay: float) -> None:
        self.t0 = t0
        self.delay_ns = round(delay * 1e9)
        self.sent = 0  # text chunks sent so far

    def wait_next(self) -> None:
        """Sleep until the next text chunk is due (not at all if it is late already)."""
        self.sent += 1
        late_by = time.monotonic_ns() - (self.t0 + self.sent * self.delay_ns)
        if late_by < 0:
            time.sleep(-late_by / 1e9)


ERROR_TYPES = {
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
}


def _refuse(status: int, directives: dict[str, str], start_response: Any) -> Iterator[bytes]:
    """An error response as OpenAI sends one: {"error": {"message", "type", "code"}}."""
    reason = http.HTTPStatus(status).phrase
    message = directives.get("message", f"fake_{reason}").replace("_", " ")
    error = {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "code": None}
    start_response(f"{status} {reason}", [("Content-Type", "application/json")])
    return iter([json.dumps({"error": error}).encode()])


def _call_deltas(calls: list[tuple[str, str]], step: int, size: int) -> list[dict[str, Any]]:
    """A step's tool calls as OpenAI streams them: id and name first, then argument fragments."""
    deltas: list[dict[str, Any]] = []
    for index, (name, arguments) in enumerate(calls):
        head = {"id": tool_call_id(step, index), "type": "function"}
        deltas.append(
            {"tool_calls": [{"index": index, **head, "function": {"name": name, "arguments": ""}}]}
        )
        deltas += [
            {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}
            for fragment in split(arguments, size)
        ]
    return deltas


def main() -> None:
    """Serve the fake LLM on 127.0.0.1 (for the benchmark)."""
    from gevent import monkey  # noqa: PLC0415

    monkey.patch_all()
    from gevent.pywsgi import WSGIServer  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8901)
    parser.add_argument("--default", default="", help="directives applied to every request")
    args = parser.parse_args()
    app = FakeLLM()
    app.default = parse_directives("@fake " + args.default)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Each chunk leaves at once, as from a real provider (accepted sockets inherit it).
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(1024)
    WSGIServer(listener, app, log=None).serve_forever()


if __name__ == "__main__":
    main()
