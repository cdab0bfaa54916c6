"""`scripts/bench --soak`: a steady mix of answers, reconnects and cancels for M minutes.

It starts what the benchmark starts, less the baseline and instance C: a private
embedded Postgres (or a scratch database on DATABASE_URL's server), the fake LLM,
chatsvc A and B, and an HTTP tool served by this process. `--soak-streams`
clients (default 20) each ask answers back to back, at a real model's pace (500
chunks of 4 characters, one every 20 ms: 10 s and 2,000 characters), each in a
fresh conversation that it follows over SSE on one instance while it sends on the
other. Some answers reason first, some call the tool; some clients drop their
stream mid-answer and reconnect, to the other instance, with `Last-Event-ID`;
some cancel the answer mid-stream. Every answer is checked: its deltas, reasoning
and tool states join with no gap and no overlap across the reconnect and equal
what the database stored; it ends `completed` with exactly the text the fake LLM
wrote, or `cancelled` with a prefix of it.

After a warm-up of one answer's length, and again in the middle and at the end
(while the load still runs), every process is measured (see footprint.py). It
prints the table and the answer counts, writes the JSON, and exits 1 when an
answer ended wrong, an answer was left streaming, or a figure grows beyond noise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
import psutil
from gevent.pywsgi import WSGIServer

from benchmarks import context, footprint, load, report, session, wire
from benchmarks.services import Database, Service, free_port
from chatsvc.fakellm import parse_directives, script_text

if TYPE_CHECKING:
    from benchmarks.run import Started

    Start = Callable[..., Started]

TOOL = "lookup"
TOOLS_FILE = """
[[tools]]
name = "{name}"
description = "Look something up (the soak's tool: answers at once)."
url = "{url}"
idempotent = true
parameters = {{ type = "object", properties = {{ q = {{ type = "string" }} }} }}
"""


class Dropped(Exception):
    """The client drops its stream now (a planned reconnect)."""


@dataclass(frozen=True)
class SoakParams:
    """How long, how many answers at once, their shape, and the mix."""

    minutes: float = 10.0  # between the start and the end reading
    streams: int = 20
    chunks: int = 500  # 500 chunks of 4 characters, one every 20 ms: 10 s, 2,000 characters
    size: int = 4
    delay: float = 0.02
    reasoning: int = 50  # reasoning chunks (before each model call) of the answers that reason
    share_reasoning: float = 0.2  # answers that reason (text after it)
    share_tools: float = 0.1  # answers that reason, call the tool, reason and answer
    share_reconnect: float = 0.25  # answers whose client drops its stream once and reconnects
    share_cancel: float = 0.1  # answers cancelled mid-stream
    samples: int = 5  # per reading (each figure is their median)
    pool_size: int = 10  # CHATSVC_POOL_SIZE of A and B (chatsvc's default)
    noise: footprint.Noise = field(default_factory=footprint.Noise)

    @property
    def answer_s(self) -> float:
        """How long one answer of text streams."""
        return self.chunks * self.delay

    @property
    def max_seconds(self) -> float:
        """The hard time limit of the whole run."""
        return self.minutes * 60 + 180


SMOKE = SoakParams(minutes=0.25, streams=6, chunks=50, reasoning=10, samples=3)


def params_from(args: argparse.Namespace) -> SoakParams:
    """The soak's parameters: the full or smoke set, with the command line's changes."""
    params = SMOKE if args.smoke else SoakParams()
    if args.soak_minutes is not None:
        params = replace(params, minutes=args.soak_minutes)
    if args.soak_streams:
        params = replace(params, streams=args.soak_streams)
    # each instance follows about half the answers, give or take those reconnected to it
    count = max(params.noise.count, params.streams // 2)
    return replace(params, noise=replace(params.noise, count=count))


say = session.progress("soak")  # progress, on stderr (stdout is for the table)


# --- the mix -----------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """One answer of the mix: what it asks the fake LLM, and what its client does meanwhile
    (seconds after the answer appeared on its stream)."""

    content: str
    reasoning: bool
    tools: bool
    drop_at_s: float | None
    cancel_at_s: float | None


def plan(rng: random.Random, p: SoakParams, seed: str) -> Plan:
    """Draw the next answer of the mix."""
    words = [f"@fake chunks={p.chunks} size={p.size} delay={p.delay:g} seed={seed}"]
    draw = rng.random()
    tools = draw < p.share_tools
    reasoning = draw < p.share_tools + p.share_reasoning
    if reasoning:
        words.append(f"reasoning={p.reasoning}")
    if tools:
        words.append(f'calls={TOOL}:{{"q":"{seed}"}}')
    drop = rng.random() < p.share_reconnect
    cancel = rng.random() < p.share_cancel
    return Plan(
        " ".join(words),
        reasoning,
        tools,
        drop_at_s=rng.uniform(0.1, 0.7) * p.answer_s if drop else None,
        cancel_at_s=rng.uniform(0.2, 0.5) * p.answer_s if cancel else None,
    )


@dataclass
class Tally:
    """What the clients did and saw."""

    completed: int = 0
    cancelled: int = 0
    late_cancels: int = 0  # the cancel came after the answer had ended: it completed, rightly
    reconnects: int = 0
    with_reasoning: int = 0
    with_tools: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def fail(self, error: BaseException | str) -> None:
        """Count an answer that ended wrong (keeping the first few reasons)."""
        self.failed += 1
        if len(self.errors) < 10:
            self.errors.append(str(error) or type(error).__name__)


# --- one answer, as its client sees it -------------------------------------------------


@dataclass
class Seen:
    """What a client has been sent of its answer, across its connections."""

    message_id: str | None = None
    shown: gevent.event.Event = field(default_factory=gevent.event.Event)
    appeared: float = 0.0  # monotonic time of the answer's `message` event
    text: list[str] = field(default_factory=list)
    offset: int = 0
    reasoning: list[str] = field(default_factory=list)
    reasoning_offset: int = 0
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_id: str | None = None  # the answer's last `id:`, for Last-Event-ID
    done: dict[str, Any] | None = None

    def apply(self, event: wire.Event) -> None:
        """Take one event of the conversation stream; AssertionError on a gap, an overlap or
        an event a soak must not see (a branch change, a takeover)."""
        if not event.data:
            return
        data = json.loads(event.data)
        if event.event == "message":
            if data["role"] == "assistant":
                self._announced(data, event.id)
            return
        if event.event in ("branch", "status"):
            raise AssertionError(f"unexpected `{event.event}` event: {event.data[:300]}")
        if data.get("message_id") != self.message_id:
            raise AssertionError(f"an event of another message: {event.data[:300]}")
        if event.event == "delta":
            self._joined("text", data["offset"], self.offset)
            self.text.append(data["text"])
            self.offset += len(data["text"])
        elif event.event == "reasoning":
            self._joined("reasoning", data["offset"], self.reasoning_offset)
            self.reasoning.append(data["text"])
            self.reasoning_offset += len(data["text"])
        elif event.event == "tool":
            self.tools[data["tool_call_id"]] = data
        elif event.event == "done":
            self.done = data
        self.last_id = event.id or self.last_id

    def _announced(self, data: dict[str, Any], event_id: str | None) -> None:
        if self.message_id is not None:
            raise AssertionError(f"the answer was announced twice: {str(data)[:300]}")
        parts = data["parts"] or []
        self.message_id, self.appeared = data["id"], time.monotonic()
        self.text, self.offset = [data["content"]], data["content_length"]
        self.reasoning = [p["text"] for p in parts if p["type"] == "reasoning"]
        self.reasoning_offset = data["reasoning_length"]
        self.tools = {
            p["tool_call_id"]: _tool_event(self.message_id, p) for p in parts if p["type"] == "tool"
        }
        self.last_id = event_id
        if data["status"] != "streaming":  # announced after it ended: no `done` follows
            self.done = {"status": data["status"], "content_length": data["content_length"]}
        self.shown.set()

    @staticmethod
    def _joined(kind: str, offset: int, expected: int) -> None:
        if offset != expected:
            raise AssertionError(f"{kind} gap or overlap: offset {offset}, expected {expected}")


def _tool_event(message_id: str, part: dict[str, Any]) -> dict[str, Any]:
    """A tool part as its `tool` event carries it (the part without its type, with the
    message id)."""
    return {"message_id": message_id, **{k: v for k, v in part.items() if k != "type"}}


@contextlib.contextmanager
def _stream(
    base: str, token: str, conversation: str, last_id: str | None
) -> Iterator[wire.Response]:
    headers = {"Authorization": f"Bearer {token}"}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    path = f"/api/conversations/{conversation}/stream"
    with wire.open_request(base, "GET", path, headers=headers, timeout=30) as response:
        if response.status != 200:
            raise wire.HttpError(f"GET {path}: {response.status}")
        yield response


def _pump(
    response: wire.Response, seen: Seen, on_open: Callable[[], None] | None, drop_at_s: float | None
) -> None:
    """Read a conversation stream into `seen` until the answer's `done`; call `on_open` at
    its `retry:` (subscribed); raise Dropped `drop_at_s` after the answer appeared."""
    parser = wire.SseParser()
    while seen.done is None:
        wait = None
        if drop_at_s is not None and seen.message_id is not None:
            wait = seen.appeared + drop_at_s - time.monotonic()
            if wait <= 0:
                raise Dropped
        with gevent.Timeout(wait, Dropped):
            _, data = response.read_some()
        if not data and response.finished:
            raise wire.HttpError("the stream ended before `done`")
        for event in parser.feed(data):
            if event.retry is not None and on_open is not None:
                on_open()
                on_open = None
            seen.apply(event)


@dataclass
class Soak:
    """The running soak: its parameters, chatsvc A and B, what the clients saw."""

    params: SoakParams
    bases: list[str]
    token: str
    tally: Tally = field(default_factory=Tally)
    stopping: gevent.event.Event = field(default_factory=gevent.event.Event)

    def call(self, base: str, method: str, path: str, body: Any = None) -> Any:
        """One JSON request as the soak's user."""
        return wire.call(base, method, path, token=self.token, body=body, timeout=30)


def answer(soak: Soak, slot: int, plan: Plan) -> None:
    """One answer of the mix, sent on one instance and followed on the other (reconnecting
    to the first, if planned), cancelled if planned; checked, then counted."""
    send, follow = soak.bases[slot % 2], soak.bases[(slot + 1) % 2]
    conversation = str(soak.call(send, "POST", "/api/conversations", {})["id"])
    seen = Seen()
    failed: list[BaseException] = []
    helpers: list[gevent.Greenlet] = []
    cancel: dict[str, Any] = {}
    timeout = 3 * soak.params.answer_s + 60
    try:
        with gevent.Timeout(timeout, AssertionError(f"no `done` within {timeout:g} s")):
            with _stream(follow, soak.token, conversation, None) as response:

                def post() -> None:
                    try:
                        load.send_when_admitted(send, soak.token, conversation, plan.content, 30)
                    except Exception as exc:
                        failed.append(exc)
                        response.close()  # no answer will come: stop the reader

                def opened() -> None:
                    helpers.append(gevent.spawn(post))
                    if plan.cancel_at_s is not None:
                        helpers.append(
                            gevent.spawn(_cancel, soak, send, seen, plan.cancel_at_s, cancel)
                        )

                try:
                    _pump(response, seen, opened, plan.drop_at_s)
                except Dropped:
                    response.close()
            if seen.done is None:
                soak.tally.reconnects += 1
                with _stream(send, soak.token, conversation, seen.last_id) as response:
                    _pump(response, seen, None, None)
            gevent.joinall(helpers, raise_error=True)
    except Exception:
        if failed:
            raise failed[0] from None
        raise
    finally:
        gevent.killall(helpers)
    _check(soak, send, plan, seen, cancel)


def _cancel(soak: Soak, base: str, seen: Seen, after_s: float, result: dict[str, Any]) -> None:
    """Cancel the answer `after_s` after it appeared; keep the status the cancel saw."""
    seen.shown.wait()
    gevent.sleep(max(seen.appeared + after_s - time.monotonic(), 0))
    message = soak.call(base, "POST", f"/api/messages/{seen.message_id}/cancel")
    result["status"] = message["status"]


def _check(soak: Soak, base: str, plan: Plan, seen: Seen, cancel: dict[str, Any]) -> None:
    """What the client was sent equals what the database stored, and the answer ended as it
    should have; AssertionError otherwise."""
    assert seen.done is not None and seen.message_id is not None
    status = seen.done["status"]
    if seen.done["content_length"] != seen.offset:
        raise AssertionError(f"`done` at {seen.done['content_length']}, text sent to {seen.offset}")
    stored = soak.call(base, "GET", f"/api/messages/{seen.message_id}")
    parts = stored["parts"] or []
    text, reasoning = "".join(seen.text), "".join(seen.reasoning)
    if stored["status"] != status or stored["content"] != text:
        raise AssertionError(
            f"sent {status} with {len(text)} characters; "
            f"stored {stored['status']} with {stored['content_length']}"
        )
    if reasoning != "".join(p["text"] for p in parts if p["type"] == "reasoning"):
        raise AssertionError("the reasoning sent differs from the reasoning stored")
    tools = {
        p["tool_call_id"]: _tool_event(seen.message_id, p) for p in parts if p["type"] == "tool"
    }
    if seen.tools != tools:
        raise AssertionError(f"tool states sent {seen.tools}, stored {tools}")
    expected = script_text(parse_directives(plan.content))
    cancelled = cancel.get("status") == "streaming"
    if status != ("cancelled" if cancelled else "completed"):
        raise AssertionError(f"ended {status}; cancel: {cancel or 'none'}: {stored.get('error')}")
    if cancelled:
        if not expected.startswith(text):
            raise AssertionError("a cancelled answer's text is not a prefix of the model's")
        soak.tally.cancelled += 1
    else:
        _check_whole(plan, text, reasoning, tools, expected)
        soak.tally.completed += 1
        soak.tally.late_cancels += plan.cancel_at_s is not None
    soak.tally.with_reasoning += bool(reasoning)
    soak.tally.with_tools += bool(tools)


def _check_whole(
    plan: Plan, text: str, reasoning: str, tools: dict[str, dict[str, Any]], expected: str
) -> None:
    if text != expected:
        raise AssertionError(f"completed with {len(text)} chars, not the model's {len(expected)}")
    if plan.reasoning and not reasoning:
        raise AssertionError("an answer that reasoned has no reasoning")
    states = [tool["state"] for tool in tools.values()]
    if states != (["output-available"] if plan.tools else []):
        raise AssertionError(f"tool states {states}")


def client(soak: Soak, slot: int) -> None:
    """Ask answers back to back until the soak stops."""
    rng = random.Random(slot)
    for n in range(10**9):
        if soak.stopping.is_set():
            return
        try:
            answer(soak, slot, plan(rng, soak.params, f"s{slot}n{n}"))
        except Exception as exc:
            soak.tally.fail(f"client {slot}, answer {n}: {exc}")
            gevent.sleep(0.5)  # a failing server must not turn this into a busy loop


# --- the run ---------------------------------------------------------------------


def _tool(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The soak's HTTP tool: every call answers at once."""
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b'{"found": "soak"}']


def serve_tool(stack: contextlib.ExitStack, tmp: Path) -> dict[str, str]:
    """Serve the tool on 127.0.0.1 (in this process, until the stack unwinds); the
    environment that gives it to chatsvc."""
    port = free_port()
    server = WSGIServer(("127.0.0.1", port), _tool, log=None, error_log=None)
    server.start()
    stack.callback(server.stop)
    path = tmp / "tools.toml"
    path.write_text(TOOLS_FILE.format(name=TOOL, url=f"http://127.0.0.1:{port}/{TOOL}"))
    return {"CHATSVC_TOOLS_FILE": str(path)}


def streaming_left(db: Database) -> int:
    """Answers still `streaming` (after the drain: none may be)."""
    with db.connect() as conn:
        row = conn.execute("SELECT count(*) FROM messages WHERE status = 'streaming'").fetchone()
    return int(row[0]) if row else -1


def soak_run(
    p: SoakParams, instances: list[Service], llm: Service, db: Database, token: str
) -> dict[str, Any]:
    """Run the clients; take the start, middle and end readings while they run; stop them
    and wait for their last answers."""
    soak = Soak(p, [instance.base for instance in instances], token)
    ramp = p.answer_s
    clients = [gevent.spawn_later(i * ramp / p.streams, client, soak, i) for i in range(p.streams)]
    first = time.monotonic() + ramp + p.answer_s  # warm-up: an answer after the last client
    span = p.minutes * 60
    readings = []
    try:
        for label, at in (("start", first), ("middle", first + span / 2), ("end", first + span)):
            time.sleep(max(at - time.monotonic(), 0))
            say(f"{label} reading ({soak.tally.completed} answers completed so far)")
            readings.append(footprint.reading(instances, llm, db, samples=p.samples))
    finally:
        soak.stopping.set()
    say("stopping the clients; waiting for their last answers")
    gevent.joinall(clients, timeout=3 * p.answer_s + 90)
    for late in [g for g in clients if not g.dead]:
        soak.tally.fail("a client did not finish its last answer in time")
        late.kill(block=False)
    return {"readings": readings, "tally": soak.tally, "streaming_left": streaming_left(db)}


def verdicts(measured: dict[str, Any], p: SoakParams) -> tuple[list[dict[str, Any]], list[str]]:
    """The table's rows, and why the soak failed (nothing when it passed)."""
    end = measured["readings"][-1]["processes"].values()
    workers = sum(1 for process in end if process["kind"] == "chatsvc worker")
    found = footprint.rows(measured["readings"], p.noise, {"chatsvc": p.pool_size * workers})
    tally: Tally = measured["tally"]
    why = [f"{tally.failed} answers ended wrong: {tally.errors}"] if tally.failed else []
    if measured["streaming_left"]:
        why.append(f"{measured['streaming_left']} answers still streaming after the run")
    for row in found:
        if row["verdict"] in footprint.FAILING:
            why.append(f"{row['process']}: {row['label']} {row['verdict']}")
    return found, why


def render(results: dict[str, Any]) -> str:
    """The table, the answer counts and the verdict."""
    tally = results["answers"]
    noise = results["params"]["noise"]
    lines = [
        footprint.render(results["rows"]),
        "",
        f"answers completed {tally['completed']} (with reasoning {tally['with_reasoning']}, "
        f"with a tool call {tally['with_tools']}), cancelled {tally['cancelled']} "
        f"(cancels after the end {tally['late_cancels']}), reconnects {tally['reconnects']}, "
        f"failures {tally['failed']}",
        f"noise: RSS may rise {noise['rss_mb']:g} MB or {noise['rss_fraction']:.0%} (the larger) "
        f"from the middle to the end reading, files and sockets {noise['count']}, "
        f"backends {noise['backends']} (a pool may grow to its size); the cluster's USS "
        f"{noise['backend_mb']:g} MB more per backend added",
    ]
    if results["failures"]:
        lines += ["", "FAILED:", *(f"- {why}" for why in results["failures"])]
    else:
        lines += ["", "PASSED"]
    return "\n".join(lines)


def main(args: argparse.Namespace, start: Start) -> int:
    """Run the soak (`start` is run.start_everything); 0 when it passed."""
    p = params_from(args)
    began = time.monotonic()
    busy_before = psutil.cpu_percent(interval=1.0)

    def run() -> int:
        with session.workspace("chatsvc-soak-", args.out, p.max_seconds) as (stack, tmp, logs):
            env = {**serve_tool(stack, tmp), "CHATSVC_POOL_SIZE": str(p.pool_size)}
            say(f"starting Postgres, the fake LLM, chatsvc A and B ({tmp})")
            up = start(
                stack,
                tmp,
                context.Params(),
                logs,
                with_batched=False,
                chatsvc_env=env,
                with_baseline=False,
            )
            say(f"{p.streams} answers at once for {p.minutes:g} min, after a warm-up")
            try:
                measured = soak_run(p, up.chatsvc, up.llm, up.db, up.tokens[0])
            except BaseException:
                session.tell_logs(say, [up.llm, *up.chatsvc])
                raise
            found, failures = verdicts(measured, p)
            readings = dict(zip(("start", "middle", "end"), measured["readings"], strict=True))
            results = {
                "soak": True,
                "smoke": args.smoke,
                "machine": report.machine(up.db.version, up.db.private, busy_before),
                "params": asdict(p),
                "readings": readings,
                "rows": found,
                "answers": asdict(measured["tally"]),
                "streaming_left": measured["streaming_left"],
                "failures": failures,
                "passed": not failures,
                "elapsed_s": round(time.monotonic() - began, 1),
            }
            print(render(results), flush=True)
            report.write_json(results, args.json)
            say(f"results written to {args.json}; stopping everything")
        return 1 if failures else 0

    return session.guarded("soak failed to run", say, run)
