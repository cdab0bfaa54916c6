"""Load runs: N clients asking answers back to back, measured over a steady window.

Client i's chatsvc answers are generated on instance i % 2 and followed on the
other one (or, for the same-worker figure, on the same one), so both workers
generate and fan out, and every delta crosses processes through Postgres; client i
of the baseline talks to baseline instance i % 2. The window starts one answer's
length after the first client, once answers start and end at the steady rate.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import gevent

from benchmarks import load, pgstats, profile
from benchmarks.context import (
    NS,
    Bench,
    Params,
    chatsvc_metrics,
    counters,
    delta,
    owned_conversations,
)
from benchmarks.meter import cpu_between, machine_busy, snapshot
from benchmarks.services import Service


def stamped_shape(p: Params, answer_s: float | None = None) -> load.Shape:
    """The old shape: stamped chunks of `chunk_chars` at `rate` a second."""
    return load.Shape(max(2, round((answer_s or p.answer_s) * p.rate)), p.chunk_chars, 1 / p.rate)


def headline_shape(p: Params, answer_s: float | None = None) -> load.Shape:
    """A real model's shape: clocked tokens of `token_chars` at `token_rate` a second."""
    chunks = max(2, round((answer_s or p.headline_answer_s) * p.token_rate))
    return load.Shape(chunks, p.token_chars, 1 / p.token_rate, clock=True)


class Window:
    """Readings at the start and the end of a run's steady window: CPU per component, the
    database's counters, chatsvc's /metrics; and py-spy on a worker over it, if asked. With
    `detail`, also each server's CPU, Postgres's WAL writes and syncs, and a sample of its
    backends' wait events every 100 ms."""

    def __init__(
        self, bench: Bench, servers: list[Service], *, uses_db: bool, detail: bool = False
    ) -> None:
        self.bench = bench
        self.uses_db = uses_db
        self.detail = detail
        self.servers = servers
        self.waits = pgstats.WaitSampler(bench.db) if detail else None
        self.trees: dict[str, list[int | None]] = {
            "server": [s.pid for s in servers],
            "postgres": [bench.db.postmaster_pid],
            "llm": [bench.llm.pid],
        }
        self.start_ns = 0
        self.end_ns = 0
        self.readings: list[dict[str, Any]] = []
        self.spy: Any = None

    def run(self, start_at: float, end_at: float, profile_pid: int | None, out: Path) -> None:
        """Take the readings at `start_at` and `end_at` (monotonic), profiling in between."""
        time.sleep(max(start_at - time.monotonic(), 0))
        self.start_ns = time.monotonic_ns()
        self.readings.append(self._read())
        if self.waits is not None:
            self.waits.start()
        if profile_pid is not None:
            self.spy = profile.start(profile_pid, end_at - start_at, out)
        time.sleep(max(end_at - time.monotonic(), 0))
        self.close()

    def close(self) -> None:
        """The end reading, now, unless taken already."""
        if len(self.readings) == 1:
            self.end_ns = time.monotonic_ns()
            if self.waits is not None:
                self.waits.stop()
            self.readings.append(self._read())

    def _read(self) -> dict[str, Any]:
        shots = {name: [snapshot(pid) for pid in pids] for name, pids in self.trees.items()}
        shots["loadgen"] = [snapshot(os.getpid(), tree=False)]
        reading: dict[str, Any] = {"cpu": shots, "busy": machine_busy()}
        reading["db"] = counters(self.bench.db)
        if self.uses_db:
            reading["metrics"] = chatsvc_metrics(self.bench.chatsvc)
        if self.detail:
            reading["wal_io"] = pgstats.wal_io(self.bench.db)
            reading["servers"] = [snapshot(s.pid) for s in self.servers]
        return reading

    def details(self) -> dict[str, Any]:
        """With `detail`: each server's CPU (% of a core), WAL writes and syncs per second,
        and the wait events sampled (the share of samples, per active backend)."""
        before, after = self.readings
        seconds = (self.end_ns - self.start_ns) / NS
        pairs = zip(before["servers"], after["servers"], strict=True)
        io = delta(before["wal_io"], after["wal_io"]) if before["wal_io"] else {}
        assert self.waits is not None
        return {
            "server_core_percent": [round(100 * cpu_between(b, a) / seconds) for b, a in pairs],
            "wal_io_per_s": {name: round(count / seconds, 1) for name, count in io.items()},
            "wal_io_source": pgstats.wal_io_source(self.bench.db),
            "waits": self.waits.summary(),
        }

    def cpu(self) -> dict[str, float | None]:
        """CPU seconds per component in the window (None: not measurable), and `other`:
        whatever else ran on the machine meanwhile (another user's tests would show here)."""
        before, after = self.readings
        used: dict[str, float | None] = {}
        for name, shots in after["cpu"].items():
            if name == "postgres" and self.trees["postgres"] == [None]:
                used[name] = None
                continue
            pairs = zip(before["cpu"][name], shots, strict=True)
            used[name] = sum(cpu_between(b, a) for b, a in pairs)
        ours = sum(seconds or 0.0 for seconds in used.values())
        used["other"] = max(after["busy"] - before["busy"] - ours, 0.0)
        return used

    def db(self) -> dict[str, int]:
        """Database counter deltas in the window."""
        return delta(self.readings[0]["db"], self.readings[1]["db"])

    def checkpoint_transactions(self) -> int | None:
        """chatsvc's checkpoint transactions in the window (both instances)."""
        if not self.uses_db:
            return None
        return int(self._metric_delta("chatsvc_checkpoint_transactions_total"))

    def first_text_commit_ms(self) -> float | None:
        """The mean time, on chatsvc's own clock, from a send to the commit of its answer's
        first text, over the answers whose first text was committed in the window: the part
        of the time to first text that the baseline has no counterpart for, free of the
        client's and the fake LLM's scheduling."""
        return self._mean_ms("chatsvc_first_text_seconds")

    def loop_lag_ms(self) -> float | None:
        """The mean lag of chatsvc's workers' event loops in the window (sampled every
        100 ms): what CHATSVC_MAX_LOOP_LAG_MS compares with its limit."""
        return self._mean_ms("chatsvc_loop_lag_seconds")

    def _mean_ms(self, histogram: str) -> float | None:
        """The mean, in ms, of one of chatsvc's histograms (in seconds) over the window's
        observations; None for the baseline, or with none observed."""
        if not self.uses_db:
            return None
        count = self._metric_delta(f"{histogram}_count")
        total = self._metric_delta(f"{histogram}_sum")
        return round(1000 * total / count, 2) if count else None

    def _metric_delta(self, name: str) -> float:
        """How much one of chatsvc's /metrics (summed over the instances) grew in the window."""
        before, after = (reading["metrics"][name] for reading in self.readings)
        return float(after - before)


def load_run(
    bench: Bench,
    system: str,
    streams: int,
    window_s: float,
    *,
    profile_pid: int | None = None,
    profile_name: str = "",
    answer_s: float | None = None,
    shape: load.Shape | None = None,
    detail: bool = False,
) -> dict[str, Any]:
    """`streams` clients asking answers back to back, on "chatsvc", "chatsvc-same",
    "chatsvc-batched" (sent to C, followed on B) or "baseline": what they saw in the steady
    window (after a ramp of one answer's length, so that answers start and end at the steady
    rate), and what it cost. The answers are of `shape` (by default the old stamped shape,
    `answer_s` long); `detail` adds what the ceiling reports (see `Window`)."""
    shape = shape or stamped_shape(bench.params, answer_s)
    answer_s = shape.answer_s
    per_slot = math.ceil(window_s / answer_s) + 2
    timeout = answer_s + 60
    samples = load.Samples()
    if system == "baseline":
        servers = bench.baseline

        def answer(slot: int, n: int) -> Callable[[], None] | None:
            if n >= per_slot:
                return None
            base = servers[slot % 2].base
            job = partial(load.baseline_answer, base, shape, bench.seed("b"))
            return partial(job, samples=samples, timeout=timeout)

    else:
        servers = bench.chatsvc
        if system == "chatsvc-batched":
            assert bench.batched is not None, "C runs in the full run only"
            servers = [bench.batched, bench.chatsvc[1]]
        conversations = owned_conversations(bench, streams * per_slot)
        other = 0 if system == "chatsvc-same" else 1

        def answer(slot: int, n: int) -> Callable[[], None] | None:
            if n >= per_slot:
                return None
            conversation, token = conversations[slot * per_slot + n]
            sender = 0 if system == "chatsvc-batched" else slot % 2
            send, follow = servers[sender].base, servers[(sender + other) % 2].base
            job = partial(load.chatsvc_answer, send, follow, token, conversation, shape)
            return partial(job, seed=bench.seed("c"), samples=samples, timeout=timeout)

    window = Window(bench, servers, uses_db=system != "baseline", detail=detail)
    spy_out = bench.out / f"profile-{profile_name}.txt"
    start_at = time.monotonic() + answer_s
    end_at = start_at + window_s
    reader = gevent.spawn(window.run, start_at, end_at, profile_pid, spy_out)
    load.drive(
        answer,
        streams,
        ramp_s=answer_s,
        until=end_at,
        samples=samples,
        timeout=2 * answer_s + window_s + 90,
    )
    reader.join(timeout=10)
    window.close()
    result = _run_result(samples, window, shape, streams, spy_out)
    return {"system": system, "streams": streams, **result}


def _run_result(
    samples: load.Samples, window: Window, shape: load.Shape, streams: int, spy_out: Path
) -> dict[str, Any]:
    seconds = (window.end_ns - window.start_ns) / NS
    summary = samples.summary(window.start_ns, window.end_ns)
    received = max(summary["chunks_received_in_window"], 1)
    used = window.cpu()
    db = window.db()
    result: dict[str, Any] = {
        "window_s": round(seconds, 2),
        **summary,
        "worst_ms_per_second": samples.timeline(window.start_ns, window.end_ns),
        "cpu_s": used,
        "cpu_us_per_chunk": {
            name: (None if value is None else round(value * 1e6 / received, 1))
            for name, value in used.items()
        },
        "core_percent": {
            name: (None if value is None else round(100 * value / seconds))
            for name, value in used.items()
        },
        "db": db,
        "write_transactions_per_s": round(db["xid"] / seconds, 1),
        "commits_per_s": round(db["commits"] / seconds, 1),
        "write_transactions_per_chunk": round(db["xid"] / received, 4),
        # per 100 concurrent answers: what one Postgres is asked for every 100 answers streaming
        "write_transactions_per_s_per_100": round(db["xid"] / seconds / (streams / 100), 1),
        "commits_per_s_per_100": round(db["commits"] / seconds / (streams / 100), 1),
        "wal_per_content_byte": round(db["wal"] / (received * shape.size), 2),
        "checkpoint_transactions": window.checkpoint_transactions(),
        "first_text_commit_ms": window.first_text_commit_ms(),
        "loop_lag_ms": window.loop_lag_ms(),
        "shape": {"chunks": shape.chunks, "size": shape.size, "delay_s": shape.delay},
        "clock": shape.clock,
    }
    if window.detail:
        result.update(window.details())
    if window.spy is not None:
        result["profile"] = profile.finish(window.spy, spy_out)
    return result


def within_bound(run: dict[str, Any], bound_ms: float, rate: float, *, strict: bool) -> bool:
    """Whether a load run kept p99 within the bound (under it, if `strict`), at 90% of the
    asked rate or more, with no failed or refused answer."""
    p99 = run["p99_ms"]
    return (
        run["answers_failed"] == 0
        and run["answers_refused"] == 0
        and p99 is not None
        and (p99 < bound_ms if strict else p99 <= bound_ms)
        and (run["rate_per_stream"] or 0) >= 0.9 * rate
    )


def ladder(bench: Bench, system: str) -> dict[str, Any]:
    """Step up the number of streams until p99 delivery leaves the bound (or the last level)."""
    p = bench.params
    levels = []
    best = 0
    for streams in p.levels:
        run = load_run(bench, system, streams, p.level_window_s)
        ok = within_bound(run, p.p99_bound_ms, p.rate, strict=True)
        levels.append(
            {
                "streams": streams,
                "p50_ms": run["p50_ms"],
                "p99_ms": run["p99_ms"],
                "max_ms": run["max_ms"],
                "worst_ms_per_second": run["worst_ms_per_second"],
                "rate_per_stream": run["rate_per_stream"],
                "failed": run["answers_failed"],
                "errors": run["errors"],
                "core_percent": run["core_percent"],
                "cpu_us_per_chunk": run["cpu_us_per_chunk"],
                "write_transactions_per_chunk": run["write_transactions_per_chunk"],
                "wal_per_content_byte": run["wal_per_content_byte"],
                "ok": ok,
            }
        )
        if not ok:
            break
        best = streams
    top = levels[-1]["ok"] if levels else False
    return {"max_streams": best, "capped": top, "levels": levels}
