"""The ceiling of one Postgres: the most concurrent answers at the headline pace that chatsvc A
and B hold within the latency bound, and, at each step, what ran out.

The bound: p99 delivery ≤ the coalescing bound (`CHATSVC_CHECKPOINT_MIN_MS`) + 30 ms, no
failed or refused answer, and at least 90% of the asked token rate. Each step reports the CPU of
every component (servers, each server, Postgres, the fake LLM, the load generator; % of
a core) and of the whole machine, Postgres's write transactions, commits, WAL bytes,
writes and syncs per second, and its backends' wait events sampled every 100 ms. The
baseline climbs the same ladder: its ceiling is what the machine allows with no database.
"""

from __future__ import annotations

import os
from typing import Any

from benchmarks import loadrun
from benchmarks.context import Bench, say

SATURATED = 85  # % of a core: a single-threaded process this busy is at its limit


def ceiling(bench: Bench) -> dict[str, Any]:
    """Both ladders, chatsvc first."""
    p = bench.params
    shape = loadrun.headline_shape(p)
    bound = bench.coalesce_ms + 30
    result: dict[str, Any] = {
        "bound_ms": bound,
        "coalesce_ms": bench.coalesce_ms,
        "rate": shape.rate,
        "shape": {"chunks": shape.chunks, "size": shape.size, "delay_s": shape.delay},
        "cores": os.cpu_count() or 1,
    }
    for system in ("chatsvc", "baseline"):
        steps = []
        best = 0
        for streams in p.ceiling_levels:
            say(f"ceiling: {system}, {streams} answers")
            run = loadrun.load_run(
                bench, system, streams, p.ceiling_window_s, shape=shape, detail=True
            )
            ok = loadrun.within_bound(run, bound, shape.rate, strict=False)
            steps.append(step(run, ok, result["cores"]))
            if not ok:
                break
            best = streams
        capped = bool(steps) and steps[-1]["ok"]
        result[system] = {"max_streams": best, "capped": capped, "steps": steps}
    return result


def step(run: dict[str, Any], ok: bool, cores: int) -> dict[str, Any]:
    """What one step of the ladder keeps: its latency, and what each resource did."""
    seconds = run["window_s"] or 1
    core = run["core_percent"]
    machine = sum(v or 0 for v in core.values())
    result = {
        "streams": run["streams"],
        "ok": ok,
        "p50_ms": run["p50_ms"],
        "p99_ms": run["p99_ms"],
        "max_ms": run["max_ms"],
        "first_text_p50_ms": run["first_text_p50_ms"],
        "rate_per_stream": run["rate_per_stream"],
        "failed": run["answers_failed"],
        "refused": run["answers_refused"],
        "errors": run["errors"],
        "core_percent": core,
        "server_core_percent": run["server_core_percent"],
        "machine_percent": machine,
        "machine_capacity_percent": 100 * cores,
        "write_transactions_per_s": run["write_transactions_per_s"],
        "commits_per_s": run["commits_per_s"],
        "wal_mb_per_s": round(run["db"]["wal"] / seconds / 1e6, 2),
        "wal_io_per_s": run["wal_io_per_s"],
        "wal_io_source": run["wal_io_source"],
        "waits": run["waits"],
        "cpu_us_per_chunk": run["cpu_us_per_chunk"],
    }
    result["ran_out"] = ran_out(result)
    return result


def ran_out(step: dict[str, Any]) -> list[str]:
    """The resources at (or near) their limit in a step: a single-threaded process using most
    of a core, the machine's cores all busy, or Postgres's backends mostly waiting on one
    thing (at least half a backend on average, other than running on a CPU)."""
    found = []
    if step["machine_percent"] >= 0.9 * step["machine_capacity_percent"]:
        found.append("the machine's CPU")
    for index, percent in enumerate(step["server_core_percent"]):
        if percent >= SATURATED:
            found.append(f"server {index + 1} CPU")
    for name, label in (("llm", "fake LLM CPU"), ("loadgen", "load generator CPU")):
        if (step["core_percent"].get(name) or 0) >= SATURATED:
            found.append(label)
    for wait in step["waits"]["top"]:
        if wait["event"] != "CPU:running" and wait["mean"] >= 0.5:
            found.append(f"Postgres waits on {wait['event']}")
    return found
