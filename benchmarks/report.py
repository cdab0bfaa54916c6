"""The machine, the table, the JSON: what a run prints and keeps."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

# Every row the table has, in order; the smoke test checks that each one is printed.
ROWS = (
    "CPU per chunk, servers",
    "CPU per chunk, servers + Postgres",
    "CPU per chunk within the bound, servers",
    "CPU per chunk within the bound, servers + Postgres",
    "Delivery p50",
    "Delivery p99",
    "Delivery p99, same worker",
    "Delivery p99 within the bound",
    "Delivery p50 with CHATSVC_CHECKPOINT_MIN_MS",
    "Delivery p99 with CHATSVC_CHECKPOINT_MIN_MS",
    "WAL per content byte",
    "WAL per content byte, token chunks",
    "WAL per content byte with CHATSVC_CHECKPOINT_MIN_MS",
    "WAL per content byte, token chunks, with CHATSVC_CHECKPOINT_MIN_MS",
    "WAL per content byte under load",
    "Write transactions per streaming second",
    "Commits per streaming second",
    "Write transactions per chunk",
    "Most streams within the bound",
    "Idle SSE subscribers held",
    "Takeover after SIGKILL of the owner",
    "Load generator CPU",
)


def machine(database_version: str, private: bool, busy_before: float) -> dict[str, Any]:
    """What the numbers were measured on (`busy_before`: % of all cores in use before)."""
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgres": f"{database_version} ({'private embedded' if private else 'DATABASE_URL'})",
        "litellm": _version("litellm"),
        "gevent": _version("gevent"),
        "gunicorn": _version("gunicorn"),
        "git": _git(),
        "busy_before": round(busy_before),
    }


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def _git() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + ("+uncommitted" if dirty else "")


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


class Table:
    """Rows of metric, chatsvc, baseline, ratio, target, met?"""

    def __init__(self) -> None:
        self.rows: list[dict[str, str]] = []

    def add(
        self,
        metric: str,
        chatsvc: str,
        baseline: str = "—",
        *,
        ratio: float | None = None,
        target: str = "—",
        met: bool | None = None,
    ) -> None:
        """Append a row."""
        self.rows.append(
            {
                "metric": metric,
                "chatsvc": chatsvc,
                "baseline": baseline,
                "ratio": "—" if ratio is None else f"{ratio:.{2 if ratio >= 0.1 else 3}f}×",
                "target": target,
                "met": _met(met),
            }
        )


def common_level(ladder: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The ladder step both systems ran with most streams among those both kept in bounds
    (or, if neither did, the first): where their costs compare at a sustainable load."""
    ours = {s["streams"]: s for s in ladder["chatsvc"]["levels"]}
    theirs = {s["streams"]: s for s in ladder["baseline"]["levels"]}
    both = sorted(set(ours) & set(theirs))
    if not both:
        return None
    good = [n for n in both if ours[n]["ok"] and theirs[n]["ok"]]
    n = good[-1] if good else both[0]
    return ours[n], theirs[n]


def _cpu_pair(cpu: dict[str, float | None], base: dict[str, float | None]) -> list[Any]:
    server = cpu["server"]
    with_pg = None if server is None or cpu["postgres"] is None else server + cpu["postgres"]
    return [(server, base["server"]), (with_pg, base["server"])]


def rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """The table's rows."""
    table = Table()
    params = results["params"]
    n = params["streams"]
    ours, base = results["load"]["chatsvc"], results["load"]["baseline"]
    level = common_level(results["ladder"])
    labels = iter(ROWS)
    pairs = _cpu_pair(ours["cpu_us_per_chunk"], base["cpu_us_per_chunk"])
    suffixes = [f"(µs, {n} streams)", f"(µs, {n} streams)"]
    if level is not None:
        pairs += _cpu_pair(level[0]["cpu_us_per_chunk"], level[1]["cpu_us_per_chunk"])
        suffixes += [f"(µs, {level[0]['streams']} streams)"] * 2
    else:
        pairs += [(None, None)] * 2
        suffixes += ["(µs)"] * 2
    for (value, baseline), suffix in zip(pairs, suffixes, strict=True):
        r = _ratio(value, baseline)
        label = f"{next(labels)} {suffix}"
        table.add(label, _num(value), _num(baseline), ratio=r, target="≤ 1.25×", met=_le(r, 1.25))
    _latency_rows(table, labels, results, level)
    _batched_latency_rows(table, labels, results)
    _wal_rows(table, labels, results)
    _capacity_rows(table, labels, results)
    return table.rows


def _latency_rows(table: Table, labels: Any, results: dict[str, Any], level: Any) -> None:
    params = results["params"]
    n = params["streams"]
    ours, base = results["load"]["chatsvc"], results["load"]["baseline"]
    table.add(
        f"{next(labels)} at {n} streams (ms)", _num(ours["p50_ms"], 1), _num(base["p50_ms"], 1)
    )
    bound = params["checkpoint_ms"] + 30
    table.add(
        f"{next(labels)} at {n} streams (ms)",
        _num(ours["p99_ms"], 1),
        _num(base["p99_ms"], 1),
        ratio=_ratio(ours["p99_ms"], base["p99_ms"]),
        target=f"≤ {bound} ms",
        met=_le(ours["p99_ms"], bound),
    )
    same = results["load"]["chatsvc_same"]
    table.add(
        f"{next(labels)} at {n} streams (ms)", _num(same["p99_ms"], 1), _num(base["p99_ms"], 1)
    )
    label = next(labels)
    if level is None:
        table.add(f"{label} (ms)", "n/a", "n/a")
        return
    table.add(
        f"{label} ({level[0]['streams']} streams, ms)",
        _num(level[0]["p99_ms"], 1),
        _num(level[1]["p99_ms"], 1),
        ratio=_ratio(level[0]["p99_ms"], level[1]["p99_ms"]),
        target=f"≤ {bound} ms",
        met=_le(level[0]["p99_ms"], bound),
    )


def _batched_latency_rows(table: Table, labels: Any, results: dict[str, Any]) -> None:
    """C's delivery, next to the baseline's ladder step with as many streams."""
    params = results["params"]
    batched = results["load"]["chatsvc_batched"]
    n = batched["streams"]
    steps = {s["streams"]: s for s in results["ladder"]["baseline"]["levels"]}
    base = steps.get(n, {"p50_ms": None, "p99_ms": None})
    bound = params["checkpoint_ms"] + 30
    for stat, target in (("p50_ms", None), ("p99_ms", bound)):
        table.add(
            f"{next(labels)}={params['checkpoint_ms']} ({n} streams, ms)",
            _num(batched[stat], 1),
            _num(base[stat], 1),
            ratio=_ratio(batched[stat], base[stat]) if target else None,
            target=f"≤ {target} ms" if target else "—",
            met=_le(batched[stat], target) if target else None,
        )


def _wal_rows(table: Table, labels: Any, results: dict[str, Any]) -> None:
    n = results["params"]["streams"]
    ours = results["load"]["chatsvc"]
    main, tokens = results["wal"]["shapes"][0], results["wal"]["shapes"][-1]
    ms = results["params"]["checkpoint_ms"]
    for key, suffix in (("wal_per_byte", ""), ("batched_wal_per_byte", f"={ms}")):
        for shape in (main, tokens):
            kb = shape["content_bytes"] / 1000
            table.add(
                f"{next(labels)}{suffix}, {kb:.0f} KB answer in {shape['chunks']} × "
                f"{shape['chunk_chars']} chars (baseline: naive rewrite)",
                _num(shape[key], 1),
                _num(shape["naive_wal_per_byte"], 1),
                ratio=_ratio(shape[key], shape["naive_wal_per_byte"]),
                target="≤ 3",
                met=_le(shape[key], 3),
            )
    table.add(f"{next(labels)}, {n} streams", _num(ours["wal_per_content_byte"], 1))
    table.add(f"{next(labels)} (xids, {n} streams)", _num(ours["write_transactions_per_s"]), "0")
    table.add(f"{next(labels)} (pg_stat_database, {n} streams)", _num(ours["commits_per_s"]), "0")
    table.add(f"{next(labels)} ({n} streams)", _num(ours["write_transactions_per_chunk"], 3), "0")


def _capacity_rows(table: Table, labels: Any, results: dict[str, Any]) -> None:
    params = results["params"]
    ladder = results["ladder"]

    def most(result: dict[str, Any]) -> str:
        return ("≥ " if result["capped"] else "") + str(result["max_streams"])

    table.add(
        f"{next(labels)} (p99 < {params['p99_bound_ms']:g} ms at {params['rate']:g} chunks/s)",
        most(ladder["chatsvc"]),
        most(ladder["baseline"]),
        ratio=_ratio(ladder["chatsvc"]["max_streams"], ladder["baseline"]["max_streams"] or None),
        target="≥ 250",
        met=ladder["chatsvc"]["max_streams"] >= 250,
    )
    subs = results["subscribers"]
    table.add(
        f"{next(labels)} (one worker; its RSS)",
        f"{subs['held']:,} of {subs['requested']:,} ({subs['rss_mb']:.0f} MB)",
        target="≥ 5,000",
        met=subs["held"] >= 5000,
    )
    take = results["takeover"]
    limit = take["lease_s"] + 1
    table.add(
        f"{next(labels)} (s, lease {take['lease_s']:g} s, worst of {len(take['trials'])})",
        _num(take["max_s"], 2),
        target=f"≤ {limit:g} s",
        met=_le(take["max_s"], limit),
    )
    n = params["streams"]
    ours, base = results["load"]["chatsvc"], results["load"]["baseline"]
    table.add(
        f"{next(labels)} at {n} streams (% of a core)",
        _num(ours["core_percent"]["loadgen"]),
        _num(base["core_percent"]["loadgen"]),
    )


def _le(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def _interference(results: dict[str, Any]) -> str:
    """How much else ran on the machine: not counted in any figure, but it competes."""
    runs = [*results["load"].values()]
    runs += [level for ladder in results["ladder"].values() for level in ladder["levels"]]
    shares = [run["core_percent"]["other"] for run in runs]
    return (
        f"other processes: {results['machine']['busy_before']}% of the machine before the run; "
        f"{min(shares)}–{max(shares)}% of a core during the load runs (mean "
        f"{sum(shares) / len(shares):.0f}%): not counted, but they compete for the cores"
    )


def render(results: dict[str, Any]) -> str:
    """The header, the table (Markdown, readable as is), and notes."""
    m, p = results["machine"], results["params"]
    lines = [
        f"chatsvc benchmark{' (smoke)' if results['smoke'] else ''} — {m['date']}, "
        f"{results['elapsed_s']:.0f} s",
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, {m['os']}; "
        f"Python {m['python']}; PostgreSQL {m['postgres']}; litellm {m['litellm']}, "
        f"gevent {m['gevent']}, gunicorn {m['gunicorn']}; git {m['git']}",
        f"parameters: {p['streams']} streams at {p['rate']:g} chunks/s of {p['chunk_chars']} "
        f"chars, answers of {p['answer_s']:g} s back to back, {p['window_s']:g} s measured "
        f"after a ramp of one answer; checkpoint {p['checkpoint_ms']} ms, "
        f"lease {p['lease_s']:g} s, heartbeat {p['heartbeat_s']:g} s; chatsvc and baseline "
        "each as 2 single-worker gunicorn instances, chatsvc answers followed on the other one",
        _interference(results),
        "",
    ]
    header = ("metric", "chatsvc", "baseline", "ratio", "target", "met?")
    keys = ("metric", "chatsvc", "baseline", "ratio", "target", "met")
    table = [header, *[tuple(row[k] for k in keys) for row in results["rows"]]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    lines.append(line(header))
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += [line(row) for row in table[1:]]
    lines += ["", *notes(results)]
    return "\n".join(lines)


def notes(results: dict[str, Any]) -> list[str]:
    """The details behind the rows: breakdowns, ladders, errors, profiles."""
    out = []
    for name, run in results["load"].items():
        cpu = run["cpu_us_per_chunk"]
        out.append(
            f"{name}: {run['answers_ok']} answers ({run['answers_failed']} failed), "
            f"{run['chunks_received_in_window']:,} chunks in the {run['window_s']} s window "
            f"({run['rate_per_stream'] or 0:.1f} chunks/s each); CPU µs/chunk: "
            + ", ".join(f"{k} {_num(v)}" for k, v in cpu.items())
            + f"; other processes used {run['core_percent']['other']}% of a core"
            + (f"; errors: {run['errors']}" if run["errors"] else "")
        )
    bound = results["params"]["p99_bound_ms"]
    for name, result in results["ladder"].items():
        steps = ", ".join(
            f"{s['streams']}: p99 {_num(s['p99_ms'])} ms (max {_num(s['max_ms'])}, "
            f"{sum(w > bound for w in s['worst_ms_per_second'])} s with a chunk over the bound) "
            f"@ {s['rate_per_stream'] or 0:.1f}/s, "
            f"{_num(s['cpu_us_per_chunk']['server'])} µs/chunk"
            + (
                f", {s['write_transactions_per_chunk']:.2f} write transactions/chunk"
                if name == "chatsvc"
                else ""
            )
            + ("" if s["ok"] else " ✗")
            for s in result["levels"]
        )
        out.append(f"ladder {name}: {steps}")
    subs = results["subscribers"]
    out.append(
        f"subscribers: {subs['connected']:,} connected in {subs['open_s']} s, {subs['held']:,} "
        f"alive after a heartbeat (server counts {_num(subs['server_subscribers'])}), "
        f"{subs['kb_per_subscriber']} KB RSS each; an answer reached {subs['reached']}/"
        f"{subs['sample']} followers of its conversation, p50 {_num(subs['fanout_p50_ms'])} ms, "
        f"p99 {_num(subs['fanout_p99_ms'])} ms"
        + (f"; errors: {subs['errors']}" if subs["errors"] else "")
    )
    take = results["takeover"]
    out.append(
        "takeover trials (status event / new text, s): "
        + ", ".join(
            f"{t['status_event_s']} / {t['new_text_s']}"
            + (f" ({t['error']})" if "error" in t else "")
            for t in take["trials"]
        )
    )
    for shape in results["wal"]["shapes"]:
        out.append(
            f"WAL {shape['chunks']} × {shape['chunk_chars']} chars every {shape['delay_s']} s: "
            f"{shape['wal_bytes']} bytes in {shape['transactions']} write transactions "
            f"({shape['full_page_images']} full-page images); naive {shape['naive_wal_bytes']:,} "
            f"bytes ({shape['naive_full_page_images']} full-page images); with "
            f"CHATSVC_CHECKPOINT_MIN_MS {shape['batched_wal_bytes']} bytes in "
            f"{shape['batched_transactions']} write transactions"
        )
    for name, summary in results.get("profile", {}).items():
        if "error" in summary:
            out.append(f"profile {name}: {summary['error']}")
            continue
        top = ", ".join(f"{f['frame']} {f['percent']}%" for f in summary["top_self"][:8])
        libs = ", ".join(f"{f['frame']} {f['percent']}%" for f in summary["self_by_library"][:8])
        out.append(
            f"profile {name} at {summary['streams']} streams ({summary['samples']} samples) "
            f"top self: {top}"
        )
        out.append(f"profile {name} self time by library: {libs}")
        # The worker's CPU per chunk, split by the innermost chatsvc module on the stack.
        server = summary["cpu_us_per_chunk"]["server"] or 0
        modules = ", ".join(
            f"{f['frame']} {f['percent']}% (~{server * f['percent'] / 100:.0f} µs)"
            for f in summary["by_chatsvc_module"][:6]
        )
        out.append(f"profile {name} by chatsvc module (µs per chunk): {modules}")
    out += results.get("notes", [])
    return out


def write_json(results: dict[str, Any], path: Path) -> None:
    """Keep the results (private keys, starting with '_', left out)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if not str(k).startswith("_")}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    path.write_text(json.dumps(clean(results), indent=2, default=str) + "\n")
