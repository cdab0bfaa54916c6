"""`scripts/bench --pg-ceiling`: the ceiling of one Postgres with the LLM and HTTP taken out.

The full ceiling (`--ceiling`) cannot reach Postgres's limit on a small machine: the
servers' LLM client saturates the cores long before Postgres is busy. This mode drives
Postgres the way chatsvc's instances do, and nothing else: `--pg-processes` emulated
instances (default 2), each a process (`python -m benchmarks.pgceiling --worker`,
gevent-patched like a chatsvc worker) running chatsvc's own `Checkpointer` with the
default settings, and one LISTEN connection on the `chatsvc` channel that receives and
decodes every other instance's notifications, as a real instance's listener does.

Each instance holds its share of the step's concurrent answers. An answer starts the way
a send does (one transaction: a conversation, the user message and the streaming answer,
the current branch, and their NOTIFY), is appended text at the headline pace (4-character
tokens at 50 a second, or `--pg-piece-ms` pieces of the same pace), is ended with
`Checkpointer.end(stream, Ending("completed"))` after `--answer` seconds (~2,000
characters), and is replaced by a new answer. Answers start staggered over one answer's
length; the steady window follows.

Per step it reports the commit delay of each token (the checkpointer's publish callback
time minus the time the text was appended), p50/p99; Postgres's CPU and the emulators';
transactions, commits, WAL bytes, writes and syncs per second; the wait events of
Postgres's backends (sampled every 100 ms); and, to extrapolate, Postgres CPU µs per
answer-second and commits per second per 100 answers. A step is within the bound when
p99 ≤ the coalescing bound + 30 ms and every answer completed; the ladder stops at the
first step that is not.

Not emulated: the LLM, HTTP and SSE (so no fan-out to clients, no reads of the stream by
followers), the reaper's sweeps. The NOTIFY payloads are chatsvc's own.
"""

from gevent import monkey

monkey.patch_all()  # before psycopg is imported, so its waits yield to other greenlets

import argparse
import collections
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from uuid import UUID

import gevent
import gevent.event

from benchmarks import context, pgstats, report, session
from benchmarks.meter import cpu_between, machine_busy, snapshot
from benchmarks.services import (
    Database,
    _dying_with_us,
    chatsvc_cli,
    private_postgres,
    scratch_database,
)
from chatsvc.config import Settings

SATURATED = 85  # % of a core: a single-threaded process this busy is at its limit
BUCKET_S = 1e-4  # delays are kept as a histogram of 0.1 ms buckets


@dataclass(frozen=True)
class PgParams:
    """What the mode measures, and how hard."""

    levels: tuple[int, ...] = (100, 250, 500, 1000, 2000, 4000)
    processes: int = 2
    window_s: float = 15.0
    answer_s: float = 10.0  # 500 tokens, about 2,000 characters
    token_chars: int = 4
    token_rate: float = 50.0
    piece_ms: float = 20.0  # one token; more appends several tokens at once, at the same pace
    smoke: bool = False

    @property
    def piece_s(self) -> float:
        return max(self.piece_ms / 1000, 1 / self.token_rate)

    def step_s(self) -> float:
        """A bound on one step: start-up, ramp, window, drain."""
        return 60 + self.answer_s + self.window_s

    def max_seconds(self) -> float:
        return 120 + len(self.levels) * self.step_s()


SMOKE = PgParams(levels=(10, 20), window_s=2.5, answer_s=1.5, smoke=True)


def params_from(args: argparse.Namespace) -> PgParams:
    """The mode's parameters: the full or smoke set, with the command line's changes."""
    p = SMOKE if args.smoke else PgParams()
    if args.levels:
        p = replace(p, levels=tuple(int(x) for x in args.levels.split(",")))
    if args.window:
        p = replace(p, window_s=args.window)
    if args.answer:
        p = replace(p, answer_s=args.answer)
    if args.pg_processes:
        p = replace(p, processes=args.pg_processes)
    if args.pg_piece_ms:
        p = replace(p, piece_ms=args.pg_piece_ms)
    return p


say = session.progress("pg-ceiling")  # progress, on stderr (stdout is for the table)


# --- the emulated instance (a worker process) --------------------------------------


@dataclass(eq=False)
class Answer:
    """One answer being appended to: how far it is, and its text not yet published."""

    stream: Any  # chatsvc.engine.stream.Stream
    began: float
    tokens: int  # how many it will have
    sent: int = 0
    chars: int = 0
    # (end offset, monotonic time appended, tokens, appended in the window) per append
    unpublished: collections.deque[tuple[int, float, int, bool]] = field(
        default_factory=collections.deque
    )
    done: gevent.event.Event = field(default_factory=gevent.event.Event)


class Instance:
    """One emulated chatsvc instance (a worker process): a Checkpointer, a listener, and its
    answers, appended to by one ticker greenlet."""

    def __init__(self, url: str, user: UUID, streams: int, p: PgParams) -> None:
        from psycopg_pool import ConnectionPool  # noqa: PLC0415 - the worker's alone

        from chatsvc.engine import db, events  # noqa: PLC0415
        from chatsvc.engine.checkpoint import Checkpointer  # noqa: PLC0415
        from chatsvc.engine.listener import LIVENESS_LOCK  # noqa: PLC0415

        self.p = p
        self.user = user
        self.streams = streams
        self.settings = Settings.from_env()
        self.owner = f"pg-ceiling-{os.getpid()}"
        self.token = ("abcd" * p.token_chars)[: p.token_chars]
        self.tokens_per_answer = max(2, round(p.answer_s * p.token_rate))
        self.delays: collections.Counter[int] = collections.Counter()
        self.tally = {"started": 0, "completed": 0, "failed": 0, "chars_in_window": 0}
        self.errors: list[str] = []
        self.listened = {"notifications": 0, "own": 0, "events": 0}
        self.by_message: dict[UUID, Answer] = {}
        self.active: list[Answer] = []
        self.window = (math.inf, math.inf)  # monotonic
        self.stopping = gevent.event.Event()
        self.checkpointer = Checkpointer(url, self.settings, self.publish, self.owner)
        self.pool = ConnectionPool(
            url, min_size=2, max_size=4, kwargs={"autocommit": True}, open=True, timeout=30
        )
        self.listen_conn = db.connect(url, autocommit=True, purpose="chatsvc-listen")
        self.listen_conn.execute(f"LISTEN {events.CHANNEL}")
        # the liveness lock a real instance's listener holds (leases.py's class of keys)
        lock = (0x63737663, int.from_bytes(os.urandom(4), "big", signed=True))
        self.listen_conn.execute(LIVENESS_LOCK, lock)

    def publish(self, batch: list[Any]) -> None:
        """The checkpointer's callback: the commit delay of every token it just published."""
        from chatsvc.engine.events import Delta  # noqa: PLC0415

        now = time.monotonic()
        for event in batch:
            answer = self.by_message.get(event.message_id) if isinstance(event, Delta) else None
            while answer is not None and answer.unpublished:
                end, appended, count, counted = answer.unpublished[0]
                if end > event.end:
                    break
                answer.unpublished.popleft()
                if counted:
                    self.delays[round((now - appended) / BUCKET_S)] += count

    def listen(self) -> None:
        """Receive every notification; decode the others', as a real listener does."""
        from chatsvc.engine.events import decode  # noqa: PLC0415

        while True:
            self.listen_conn.execute("SELECT 1")
            for notice in self.listen_conn.notifies(timeout=1.0):
                self.listened["notifications"] += 1
                if notice.pid in self.checkpointer.backend_pids:
                    self.listened["own"] += 1
                    continue
                self.listened["events"] += len(decode(notice.payload))

    def start_answer(self) -> Any:
        """What a send writes: a conversation, the user message and the streaming answer, the
        branch shown, and their notifications, in one transaction; the answer's Stream."""
        from chatsvc.engine import events, messages, tree  # noqa: PLC0415
        from chatsvc.engine.stream import Stream  # noqa: PLC0415

        user, model = self.user, "openai/fake"
        with self.pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "INSERT INTO conversations (user_id) VALUES (%s) RETURNING id", (user,)
            ).fetchone()
            assert row is not None
            conversation = row[0]
            tree.lock(conn, conversation)
            answer = messages.NewAnswer(user, model, self.owner, self.settings.lease_s)
            new = messages.NewExchange.after(
                conversation, None, content="a question", client_message_id=None, answer=answer
            )
            assert messages.insert_exchange(conn, new)
            question, message = new.question_id, new.answer_id
            tree.show(conn, conversation, message)
            started = events.room_event(
                None,
                user,
                "stream.started",
                conversation_id=conversation,
                message_id=message,
                user_id=user,
            )
            created = [
                events.MessageCreated(conversation, question),
                events.MessageCreated(conversation, message),
            ]
            events.send(conn, [*created, started])
        return Stream(message, conversation, user, model, epoch=1, committed=0)

    def slot(self, index: int) -> None:
        """One of the concurrent answers: started, appended to by the ticker, ended, again."""
        from chatsvc.engine.stream import Ending  # noqa: PLC0415

        gevent.sleep(index * self.p.answer_s / max(self.streams, 1))  # staggered starts
        while not self.stopping.is_set():
            try:
                stream = self.start_answer()
            except Exception as exc:
                self.tally["failed"] += 1
                self.errors.append(f"start: {exc}")
                gevent.sleep(0.1)
                continue
            self.tally["started"] += 1
            answer = Answer(stream, time.monotonic(), self.tokens_per_answer)
            self.by_message[stream.message_id] = answer
            self.checkpointer.adopt(stream)
            if self.stopping.is_set():
                answer.done.set()  # started as the run stopped: it ends at once
            else:
                self.active.append(answer)
            answer.done.wait()
            try:
                ok = self.checkpointer.end(stream, Ending("completed"))
            except Exception as exc:
                ok = False
                self.errors.append(f"end: {exc}")
            self.tally["completed" if ok else "failed"] += 1
            self.by_message.pop(stream.message_id, None)

    def ticker(self) -> None:
        """Every piece interval, append to each answer the tokens its clock says are due."""
        token_s = 1 / self.p.token_rate
        next_at = time.monotonic()
        while not self.stopping.is_set():
            now = time.monotonic()
            counted = self.window[0] <= now < self.window[1]
            for answer in list(self.active):
                due = min(int((now - answer.began) / token_s) + 1, answer.tokens) - answer.sent
                if due > 0:
                    text = self.token * due
                    self.checkpointer.append(answer.stream, text)
                    answer.sent += due
                    answer.chars += len(text)
                    answer.unpublished.append((answer.chars, now, due, counted))
                    if counted:
                        self.tally["chars_in_window"] += len(text)
                if answer.sent >= answer.tokens:
                    self.active.remove(answer)
                    answer.done.set()
            next_at = max(next_at + self.p.piece_s, time.monotonic())  # behind: no burst
            gevent.sleep(max(next_at - time.monotonic(), 0))

    def run(self, start_wall: float, end_wall: float) -> None:
        """Answers from now until `end_wall`, the tokens appended from `start_wall` measured;
        then the answers under way end with what they have."""
        offset = time.monotonic() - time.time()
        self.window = (start_wall + offset, end_wall + offset)
        slots = [gevent.spawn(self.slot, i) for i in range(self.streams)]
        tick = gevent.spawn(self.ticker)
        gevent.sleep(max(self.window[1] - time.monotonic(), 0))
        self.stopping.set()
        tick.join()
        for answer in list(self.active):
            self.active.remove(answer)
            answer.done.set()
        gevent.joinall(slots, raise_error=True)

    def close(self) -> dict[str, Any]:
        """Stop; what it measured."""
        self.checkpointer.stop()
        self.listen_conn.close()
        self.pool.close()
        stats = self.checkpointer.stats
        return {
            "delays": {str(k): v for k, v in self.delays.items()},
            "tally": self.tally,
            "errors": self.errors[:5],
            "listened": self.listened,
            "checkpointer": {
                "transactions": stats.transactions,
                "checkpoints": stats.checkpoints,
                "errors": stats.errors,
                "fenced": stats.fenced,
            },
        }


def worker(argv: list[str]) -> int:
    """`python -m benchmarks.pgceiling --worker`: one emulated instance. Prints "ready", reads
    the window's wall-clock start and end from stdin, writes its results as JSON to --out."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--url", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--params", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    p = PgParams(**{**json.loads(args.params), "levels": ()})
    instance = Instance(args.url, UUID(args.user), args.streams, p)
    instance.checkpointer.start()
    listener = gevent.spawn(instance.listen)
    print("ready", flush=True)
    start_wall, end_wall = (float(x) for x in sys.stdin.readline().split())
    with gevent.Timeout(end_wall - time.time() + p.answer_s + 60):  # a hard limit of its own
        instance.run(start_wall, end_wall)
    listener.kill()
    args.out.write_text(json.dumps(instance.close()))
    return 0


# --- the driver ------------------------------------------------------------------


def percentile_of(histogram: collections.Counter[int], q: float) -> float | None:
    """The q-th percentile (nearest rank) of a histogram of 0.1 ms buckets, in ms."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = max(1, math.ceil(q / 100 * total))
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return round(bucket * BUCKET_S * 1000, 1)
    return None


def spawn_workers(
    p: PgParams, db: Database, streams: int, *, user: str, tmp: Path, env: dict[str, str]
) -> list[tuple[subprocess.Popen[str], Path]]:
    """The emulated instances of a step, each with its share of the answers, once ready."""
    shares = [streams // p.processes + (i < streams % p.processes) for i in range(p.processes)]
    started = []
    for index, share in enumerate(shares):
        out = tmp / f"worker-{streams}-{index}.json"
        argv = [sys.executable, "-m", "benchmarks.pgceiling", "--worker", "--url", db.url]
        argv += ["--user", user, "--streams", str(share), "--out", str(out)]
        argv += ["--params", json.dumps(asdict(p))]
        with (tmp / f"worker-{streams}-{index}.log").open("w") as log:
            proc = subprocess.Popen(
                _dying_with_us(argv),
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        started.append((proc, out))
    for proc, _ in started:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"an emulated instance did not start (exit {proc.poll()})")
    return started


def stop_workers(workers: list[tuple[subprocess.Popen[str], Path]]) -> None:
    """Whatever is still running of a step's workers (only after a failure)."""
    for proc, _ in workers:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def run_step(
    p: PgParams, db: Database, streams: int, *, user: str, tmp: Path, env: dict[str, str]
) -> dict[str, Any]:
    """One step of the ladder: `streams` answers over the emulated instances."""
    workers = spawn_workers(p, db, streams, user=user, tmp=tmp, env=env)
    try:
        start_wall = time.time() + 0.5 + p.answer_s  # a ramp of one answer's length
        end_wall = start_wall + p.window_s
        for proc, _ in workers:
            assert proc.stdin is not None
            proc.stdin.write(f"{start_wall} {end_wall}\n")
            proc.stdin.flush()
        pids = [proc.pid for proc, _ in workers]
        time.sleep(max(start_wall - time.time(), 0))
        waits = pgstats.WaitSampler(db)
        before = reading(db, pids)
        waits.start()
        time.sleep(max(end_wall - time.time(), 0))
        waits.stop()
        after = reading(db, pids)
        for proc, _ in workers:
            proc.wait(timeout=p.answer_s + 90)
    finally:
        stop_workers(workers)
    results = []
    for proc, out in workers:
        if proc.returncode != 0 or not out.exists():
            log = out.with_suffix(".log")
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"an emulated instance failed (exit {proc.returncode}):\n{tail}")
        results.append(json.loads(out.read_text()))
    bound = Settings.from_env(env).coalesce_ms + 30
    return summarise(
        p, streams, bound, before=before, after=after, waits=waits.summary(), results=results
    )


def reading(db: Database, pids: list[int]) -> dict[str, Any]:
    """CPU of Postgres and of each emulator, the machine's, and Postgres's counters, now."""
    return {
        "ns": time.monotonic_ns(),
        "postgres": snapshot(db.postmaster_pid),
        "workers": [snapshot(pid) for pid in pids],
        "busy": machine_busy(),
        "db": context.counters(db),
        "wal_io": pgstats.wal_io(db),
    }


def summarise(
    p: PgParams,
    streams: int,
    bound: float,
    *,
    before: dict[str, Any],
    after: dict[str, Any],
    waits: dict[str, Any],
    results: list[dict[str, Any]],
) -> dict[str, Any]:
    """What one step keeps."""
    seconds = (after["ns"] - before["ns"]) / context.NS
    histogram: collections.Counter[int] = collections.Counter()
    tally: collections.Counter[str] = collections.Counter()
    listened: collections.Counter[str] = collections.Counter()
    checkpoints: collections.Counter[str] = collections.Counter()
    errors = []
    for result in results:
        histogram.update({int(k): v for k, v in result["delays"].items()})
        tally.update(result["tally"])
        listened.update(result["listened"])
        checkpoints.update(result["checkpointer"])
        errors += result["errors"]
    pg_cpu = None if db_unseen(before) else cpu_between(before["postgres"], after["postgres"])
    worker_cpu = [
        cpu_between(b, a) for b, a in zip(before["workers"], after["workers"], strict=True)
    ]
    machine = after["busy"] - before["busy"]
    counts = context.delta(before["db"], after["db"])
    io = context.delta(before["wal_io"], after["wal_io"]) if before["wal_io"] else {}
    asked_chars = streams * seconds * p.token_rate * p.token_chars
    answer_seconds = streams * seconds
    step: dict[str, Any] = {
        "answers": streams,
        "window_s": round(seconds, 2),
        "bound_ms": bound,
        "tokens_measured": sum(histogram.values()),
        "p50_ms": percentile_of(histogram, 50),
        "p99_ms": percentile_of(histogram, 99),
        "max_ms": percentile_of(histogram, 100),
        "rate_ratio": round(tally["chars_in_window"] / asked_chars, 3) if asked_chars else None,
        "started": tally["started"],
        "completed": tally["completed"],
        "failed": tally["failed"],
        "errors": errors[:5],
        "postgres_core_percent": None if pg_cpu is None else round(100 * pg_cpu / seconds, 1),
        "emulator_core_percent": [round(100 * c / seconds, 1) for c in worker_cpu],
        "machine_percent": round(100 * machine / seconds, 1),
        "machine_capacity_percent": 100 * (os.cpu_count() or 1),
        "xids_per_s": round(counts["xid"] / seconds, 1),
        "commits_per_s": round(counts["commits"] / seconds, 1),
        "wal_mb_per_s": round(counts["wal"] / seconds / 1e6, 3),
        "wal_io_per_s": {name: round(n / seconds, 1) for name, n in io.items()},
        "waits": waits,
        "pg_cpu_us_per_answer_second": (
            None if pg_cpu is None else round(pg_cpu * 1e6 / answer_seconds, 1)
        ),
        "commits_per_s_per_100": round(counts["commits"] / seconds / (streams / 100), 1),
        "checkpoint_transactions": checkpoints["transactions"],
        "notifications_received_per_s": round(listened["notifications"] / seconds, 1),
    }
    per_answer_s = step["pg_cpu_us_per_answer_second"]
    step["answers_per_pg_core"] = round(1e6 / per_answer_s) if per_answer_s else None
    step["ok"] = bool(
        step["p99_ms"] is not None
        and step["p99_ms"] <= bound
        and step["failed"] == 0
        and step["completed"] >= step["started"] > 0
    )
    step["ran_out"] = ran_out(step)
    return step


def db_unseen(reading: dict[str, Any]) -> bool:
    """Whether Postgres's processes are out of sight (a server on another machine)."""
    return not reading["postgres"].live


def ran_out(step: dict[str, Any]) -> list[str]:
    """The resources at (or near) their limit: as ceiling.py's, for this mode's processes."""
    found = []
    if step["machine_percent"] >= 0.9 * step["machine_capacity_percent"]:
        found.append("the machine's CPU")
    if (step["postgres_core_percent"] or 0) >= SATURATED:
        found.append("Postgres CPU")
    if any(c >= SATURATED for c in step["emulator_core_percent"]):
        found.append("emulator CPU")
    if step["rate_ratio"] is not None and step["rate_ratio"] < 0.9:
        found.append("emulators fell behind the pace")
    for wait in step["waits"]["top"]:
        if wait["event"] != "CPU:running" and wait["mean"] >= 0.5:
            found.append(f"Postgres waits on {wait['event']}")
    return found


COLUMNS = (
    ("answers", "answers"),
    ("ok", "ok"),
    ("p50 ms", "p50_ms"),
    ("p99 ms", "p99_ms"),
    ("pace", "rate_ratio"),
    ("done/failed", None),
    ("PG %core", "postgres_core_percent"),
    ("emul %core", None),
    ("machine %", "machine_percent"),
    ("xid/s", "xids_per_s"),
    ("commit/s", "commits_per_s"),
    ("WAL MB/s", "wal_mb_per_s"),
    ("WAL wr/sync/s", None),
    ("PG µs/answer-s", "pg_cpu_us_per_answer_second"),
    ("commit/s/100", "commits_per_s_per_100"),
    ("top waits", None),
    ("ran out", None),
)


def render(result: dict[str, Any]) -> str:
    """The table (markdown) and the verdict."""
    lines = [
        "| " + " | ".join(name for name, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for step in result["steps"]:
        cells = []
        for name, key in COLUMNS:
            if key is not None:
                value = step[key]
                cells.append("yes" if value is True else "NO" if value is False else str(value))
            elif name == "done/failed":
                cells.append(f"{step['completed']}/{step['failed']}")
            elif name == "emul %core":
                cells.append("+".join(f"{c:g}" for c in step["emulator_core_percent"]))
            elif name == "WAL wr/sync/s":
                io = step["wal_io_per_s"]
                cells.append(f"{io.get('writes', '-')}/{io.get('syncs', '-')}")
            elif name == "top waits":
                top = [w for w in step["waits"]["top"] if w["mean"] >= 0.05][:3]
                cells.append(", ".join(f"{w['event']} {w['mean']:g}" for w in top) or "-")
            else:
                cells.append(", ".join(step["ran_out"]) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    best = result["max_answers"]
    capped = " (every step held: the ceiling is higher)" if result["capped"] else ""
    lines.append("")
    lines.append(
        f"Ceiling of one Postgres ({result['processes']} emulated instances, bound p99 ≤ "
        f"{result['bound_ms']} ms): {best} concurrent answers{capped}."
    )
    extrapolated = [s["answers_per_pg_core"] for s in result["steps"] if s["answers_per_pg_core"]]
    if extrapolated:
        lines.append(
            f"One Postgres core holds about {extrapolated[-1]} answers at the last step's "
            "CPU per answer-second (CPU alone; WAL flushes and locks aside)."
        )
    return "\n".join(lines)


def worker_env(chatsvc_env: dict[str, str]) -> dict[str, str]:
    """The emulators' environment: the bench's chatsvc settings, `--chatsvc-env` on top."""
    defaults = context.Params()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSVC_")}
    env.pop("DATABASE_URL", None)
    env.update(
        {
            "CHATSVC_CHECKPOINT_MS": str(defaults.checkpoint_ms),
            "CHATSVC_LEASE_S": f"{defaults.lease_s:g}",
            "CHATSVC_HEARTBEAT_S": f"{defaults.heartbeat_s:g}",
            "PYTHONUNBUFFERED": "1",
            **chatsvc_env,
        }
    )
    return env


def main(args: argparse.Namespace, chatsvc_env: dict[str, str]) -> int:
    """Run the ladder; 0 when the table was produced."""
    p = params_from(args)
    env = worker_env(chatsvc_env)
    settings = Settings.from_env(env)
    began = time.monotonic()
    busy_before = session.busy_before(say)

    def run() -> int:
        with session.workspace(
            "chatsvc-pgceiling-", args.out, p.max_seconds(), keep_logs=False
        ) as (stack, tmp, _):
            say(f"starting Postgres ({tmp})")
            server_url = os.environ.get("DATABASE_URL")
            db = scratch_database(server_url) if server_url else private_postgres(tmp / "pg")
            stack.callback(db.close)
            chatsvc_cli({**env, "DATABASE_URL": db.url}, "db", "upgrade")
            chatsvc_cli({**env, "DATABASE_URL": db.url}, "users", "create", "bench")
            with db.connect() as conn:
                row = conn.execute("SELECT id FROM users WHERE name = 'bench'").fetchone()
            assert row is not None
            user = str(row[0])
            env["DATABASE_URL"] = db.url
            steps = []
            best = 0
            for streams in p.levels:
                say(f"{streams} answers over {p.processes} emulated instances")
                step = run_step(p, db, streams, user=user, tmp=tmp, env=env)
                steps.append(step)
                say(
                    f"  p99 {step['p99_ms']} ms, Postgres {step['postgres_core_percent']}% "
                    f"of a core, {'within' if step['ok'] else 'OUT OF'} the bound"
                )
                if not step["ok"]:
                    break
                best = streams
            result = {
                "pg_ceiling": True,
                "smoke": p.smoke,
                "machine": report.machine(db.version, db.private, busy_before),
                "params": asdict(p),
                "piece": (
                    "one 4-character token every 20 ms"
                    if p.piece_s <= 1 / p.token_rate
                    else f"{round(p.piece_s * p.token_rate)} tokens every {p.piece_ms:g} ms"
                ),
                "processes": p.processes,
                "coalesce_ms": settings.coalesce_ms,
                "bound_ms": settings.coalesce_ms + 30,
                "chatsvc_env": chatsvc_env,
                "max_answers": best,
                "capped": bool(steps) and steps[-1]["ok"],
                "steps": steps,
                "notes": [] if db.private else ["DATABASE_URL: WAL and CPU are the whole server's"],
                "elapsed_s": round(time.monotonic() - began, 1),
            }
            print(render(result), flush=True)
            report.write_json(result, args.json)
            say(f"results written to {args.json}; stopping everything")
        return 0

    return session.guarded("pg-ceiling failed", say, run)


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        sys.exit(worker(sys.argv[1:]))
    sys.exit("run it as scripts/bench --pg-ceiling")
