"""The soak's readings: memory, open files and connections of every process, and the verdict.

A reading measures, for each process the soak runs (each chatsvc master and
worker, the fake LLM, the load generator, and the private Postgres cluster as one
row), its RSS, its open file descriptors and its TCP sockets (psutil), plus
Postgres's backends on the bench database from `pg_stat_activity`, by
`application_name`. Each figure is the median of a few samples taken a fraction of
a second apart, so that one answer starting or ending at that instant does not
move it.

Three readings are taken (start, middle, end) and each figure gets a verdict
(`verdict`): it *grows* when it rose from the middle to the end reading by more
than the noise (`Noise`); growth only between the start and the middle reading is a
*step* (a cache filled, a pool grew to the load), which passes.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from benchmarks.services import Database, Service

MB = 1024 * 1024

# What a figure's verdict says; those in FAILING fail the soak.
OK, STEP, GROWS, MISSING, RESTARTED = "ok", "step", "grows", "missing", "restarted"
BOUNDED = "bounded"  # it rose beyond noise, but ends within its ceiling (a pool's size)
INFO = "info"  # shown, not judged (see INFORMATIONAL)
FAILING = frozenset({GROWS, MISSING, RESTARTED})

# The Postgres cluster's RSS counts every shared-buffer page once in each process that
# touched it, so it rises as backends touch more of shared_buffers (up to shared_buffers
# times the processes): its private memory (USS) is judged instead. Its open files are
# Postgres's descriptor cache (up to max_files_per_process a process, filled as tables,
# indexes and WAL segments are touched): leaked connections show in the backends rows.
INFORMATIONAL = frozenset({("postgres", "rss"), ("postgres", "fds")})


@dataclass(frozen=True)
class Noise:
    """How much a figure may rise from the middle to the end reading and still be noise.

    RSS: a steadily leaking process keeps growing in the second half of the run; a
    process that merely filled its caches or its heap's free lists grew once, early.
    So memory grows only when it rose by more than `rss_mb` AND by more than
    `rss_fraction` of the middle reading (allocator and greenlet churn moves a
    Python worker's RSS by a few MB either way). Descriptors and TCP sockets follow
    the answers in flight at the instant of a reading, which the median of the
    samples mostly, not wholly, smooths: `count` of them. Postgres backends:
    `backends` of them; but each worker's pool grows (and, after 10 idle minutes,
    shrinks) between 1 and CHATSVC_POOL_SIZE with demand, so a pool that ends within
    its size is `bounded`, not growing. Each backend the pools add brings its own
    memory: the cluster's USS may rise `backend_mb` more for each.
    """

    rss_mb: float = 20.0  # and USS, for the Postgres cluster
    rss_fraction: float = 0.10
    count: int = 10
    backends: int = 3
    backend_mb: float = 8.0

    def allowed(self, metric: str, middle: float) -> float:
        """The largest rise from the middle reading that is noise, for this metric."""
        if metric in ("rss", "uss"):
            return max(self.rss_mb * MB, self.rss_fraction * middle)
        if metric == "backends":
            return float(self.backends)
        return float(self.count)


def verdict(
    metric: str,
    values: Sequence[float | None],
    noise: Noise,
    *,
    extra: float = 0.0,
    ceiling: float | None = None,
) -> str:
    """The verdict on one figure's (start, middle, end) readings: `ok`, `step` (it rose
    beyond noise before the middle reading, then held), `grows` (it rose beyond noise,
    plus `extra`, from the middle to the end), `bounded` (it would grow, but ends at or
    under its `ceiling`) or `missing` (a reading has no value)."""
    if len(values) != 3 or any(value is None for value in values):
        return MISSING
    start, middle, end = (float(value) for value in values if value is not None)
    allowed = noise.allowed(metric, middle) + extra
    if end - middle > allowed:
        return BOUNDED if ceiling is not None and end <= ceiling else GROWS
    if middle - start > allowed:
        return STEP
    return OK


def judge(
    metric: str,
    values: Sequence[float | None],
    pids: Sequence[Sequence[int]],
    noise: Noise,
    *,
    extra: float = 0.0,
) -> str:
    """`verdict`, or `restarted` when a single process was replaced between readings (a
    crashed or recycled worker: its figures are another process's)."""
    single = all(len(p) <= 1 for p in pids)
    if single and len({tuple(p) for p in pids}) > 1:
        return RESTARTED
    return verdict(metric, values, noise, extra=extra)


# --- the processes --------------------------------------------------------------


@dataclass(frozen=True)
class Watched:
    """One row of the table: a process (or the Postgres cluster, `tree`) by its role."""

    name: str  # e.g. "chatsvc-A worker"
    kind: str  # chatsvc master | chatsvc worker | fakellm | loadgen | postgres
    pid: int
    tree: bool = False  # the process and all its descendants, summed


def watched(instances: list[Service], llm: Service, db: Database) -> list[Watched]:
    """Every process the soak runs, as it is now (workers are looked up at each reading)."""
    rows = []
    for instance in instances:
        rows.append(Watched(f"{instance.name} master", "chatsvc master", instance.pid))
        workers = instance.workers()
        for index, pid in enumerate(workers, start=1):
            suffix = f" {index}" if len(workers) > 1 else ""
            rows.append(Watched(f"{instance.name} worker{suffix}", "chatsvc worker", pid))
    rows.append(Watched("fakellm", "fakellm", llm.pid))
    rows.append(Watched("loadgen (this process)", "loadgen", os.getpid()))
    if db.private and db.postmaster_pid is not None:
        rows.append(Watched("postgres cluster", "postgres", db.postmaster_pid, tree=True))
    return rows


FIGURES = ("rss", "uss", "fds", "tcp")


def _one(process: psutil.Process, *, uss: bool) -> tuple[int, int, int, int]:
    with process.oneshot():
        return (
            int(process.memory_info().rss),
            int(process.memory_full_info().uss) if uss else 0,
            int(process.num_fds()),
            len(process.net_connections(kind="tcp")),
        )


def measure(row: Watched) -> dict[str, Any]:
    """RSS and (for a tree) USS in bytes, open descriptors and TCP sockets of a process,
    summed over its tree, and the pids measured; None figures when it is gone or not ours
    to read."""
    gone: dict[str, Any] = {"pids": [], **dict.fromkeys(FIGURES)}
    try:
        root = psutil.Process(row.pid)
        processes = [root, *root.children(recursive=True)] if row.tree else [root]
    except psutil.Error:
        return gone
    total = [0, 0, 0, 0]
    pids = []
    for process in processes:
        try:
            figures = _one(process, uss=row.tree)
        except psutil.NoSuchProcess:
            continue  # a backend that ended meanwhile
        except psutil.AccessDenied:
            return gone
        total = [a + b for a, b in zip(total, figures, strict=True)]
        pids.append(process.pid)
    measured: dict[str, Any] = dict(zip(FIGURES, total, strict=True))
    if not row.tree:
        measured["uss"] = None
    return {"pids": [row.pid] if row.tree else pids, **measured}


ALL = "(all)"  # the backends of every application_name

BACKENDS = """
SELECT coalesce(nullif(application_name, ''), '(none)'), coalesce(state, '(none)'), count(*)
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
GROUP BY 1, 2
"""


def backends(db: Database) -> dict[str, dict[str, int]]:
    """The bench database's backends by application_name, then by state (our own left out)."""
    found: dict[str, dict[str, int]] = {}
    with db.connect() as conn:
        for application, state, count in conn.execute(BACKENDS).fetchall():
            found.setdefault(str(application), {})[str(state)] = int(count)
    return found


def sample(rows: list[Watched], db: Database) -> dict[str, Any]:
    """One sample of every figure."""
    processes = {row.name: {"kind": row.kind, **measure(row)} for row in rows}
    return {"processes": processes, "backends": backends(db)}


def _median(values: list[int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def reading(
    instances: list[Service], llm: Service, db: Database, *, samples: int = 5, gap_s: float = 0.2
) -> dict[str, Any]:
    """A reading: the median of `samples` samples `gap_s` apart, per figure. Backends are
    counted per application_name (totals), with the states of the last sample kept."""
    rows = watched(instances, llm, db)
    taken = []
    for index in range(samples):
        if index:
            time.sleep(gap_s)
        taken.append(sample(rows, db))
    processes: dict[str, Any] = {}
    for row in rows:
        shots = [shot["processes"][row.name] for shot in taken]
        processes[row.name] = {
            "kind": row.kind,
            "pids": shots[-1]["pids"],
            **{metric: _median([s[metric] for s in shots]) for metric in FIGURES},
        }
    applications = sorted({app for shot in taken for app in shot["backends"]})
    totals = {
        app: _median([sum(shot["backends"].get(app, {}).values()) for shot in taken])
        for app in applications
    }
    totals[ALL] = _median(
        [sum(sum(s.values()) for s in shot["backends"].values()) for shot in taken]
    )
    return {
        "at": time.monotonic(),
        "processes": processes,
        "backends": totals,
        "backend_states": taken[-1]["backends"],
    }


# --- the table ------------------------------------------------------------------

METRICS = (
    ("rss", "RSS (MB)"),
    ("uss", "private memory, USS (MB)"),
    ("fds", "open files"),
    ("tcp", "TCP sockets"),
)


def rows(
    readings: list[dict[str, Any]], noise: Noise, pool: dict[str, int] | None = None
) -> list[dict[str, Any]]:
    """One row per process and figure, and one per application's Postgres backends: the
    start, middle and end readings, the growth from start to end, and the verdict. `pool`:
    the most connections each pooled application_name may hold (the pools' sizes summed)."""
    pool = pool or {}
    added = [reading["backends"].get(ALL, 0.0) for reading in readings]
    extra = max(added[2] - added[1], 0.0) * noise.backend_mb * MB  # see Noise
    found: list[dict[str, Any]] = []
    for name, first in readings[0]["processes"].items():
        series = [reading["processes"].get(name, {}) for reading in readings]
        pids = [shot.get("pids", []) for shot in series]
        for metric, label in METRICS:
            if metric == "uss" and first["kind"] != "postgres":
                continue
            values = [shot.get(metric) for shot in series]
            more = extra if metric == "uss" else 0.0
            judged = judge(metric, values, pids, noise, extra=more)
            if (first["kind"], metric) in INFORMATIONAL:
                judged = INFO
            found.append(_row(name, first["kind"], metric, label, values, judged=judged))
    for app in sorted({app for reading in readings for app in reading["backends"]}):
        values = [reading["backends"].get(app, 0.0) for reading in readings]
        # the total is shown; each application is judged
        judged = INFO if app == ALL else verdict("backends", values, noise, ceiling=pool.get(app))
        found.append(
            _row(f"postgres: {app}", "postgres", "backends", "backends", values, judged=judged)
        )
    return found


def _row(
    name: str, kind: str, metric: str, label: str, values: list[Any], *, judged: str
) -> dict[str, Any]:
    start, middle, end = values
    growth = None if start is None or end is None else end - start
    return {
        "process": name,
        "kind": kind,
        "metric": metric,
        "label": label,
        "start": start,
        "middle": middle,
        "end": end,
        "growth": growth,
        "verdict": judged,
    }


def _cell(metric: str, value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "—"
    if metric in ("rss", "uss"):
        return f"{value / MB:+.1f}" if signed else f"{value / MB:.1f}"
    return f"{value:+g}" if signed else f"{value:g}"


def render(found: list[dict[str, Any]]) -> str:
    """The table, in Markdown."""
    header = ("process", "figure", "start", "middle", "end", "growth", "verdict")
    lines = [header]
    for row in found:
        metric = row["metric"]
        lines.append(
            (
                row["process"],
                row["label"],
                _cell(metric, row["start"]),
                _cell(metric, row["middle"]),
                _cell(metric, row["end"]),
                _cell(metric, row["growth"], signed=True),
                f"**{row['verdict']}**" if row["verdict"] in FAILING else row["verdict"],
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for index, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if index == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)
