"""The machine, the table, the JSON: what a run prints and keeps."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

# The headline rows (a real model's shape), each printed once per level (the single
# answer's WAL once), in this order.
HEADLINE_ROWS = (
    "Time to first text p50",
    "Time to first text p99",
    "First text committed after the send, mean on chatsvc's clock",
    "Token delivery p50",
    "Token delivery p99",
    "CPU per token, servers",
    "CPU per token, servers + Postgres",
    "Write transactions per second per 100 answers",
    "Commits per second per 100 answers",
    "WAL per content byte, headline load",
    "WAL per content byte, one headline answer alone",
    "Achieved token rate",
    "Event loop lag of chatsvc's workers, mean",
    "Answers ended well / failed / refused as busy (503)",
)
# The old shapes' rows (stamped 24-character chunks), after the headline in the full run.
OLD_ROWS = (
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
# Every row of the full run's table, in order; the smoke test checks that each is printed.
ROWS = HEADLINE_ROWS + OLD_ROWS
CEILING_ROWS = ("Most answers within the bound at the headline pace",)


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


def _met_runs(oks: list[bool | None]) -> str:
    """Met in every run ("yes"), or not; with how many runs met it when there were several."""
    known = [ok for ok in oks if ok is not None]
    if not known:
        return "—"
    text = _met(all(known) and len(known) == len(oks))
    return text if len(oks) == 1 else f"{text} ({sum(known)}/{len(oks)} runs)"


def _span(values: list[float | None], digits: int = 0) -> str:
    """One figure per run: the value, or the range (min to max) over the runs."""
    known = [v for v in values if v is not None]
    if not known:
        return "n/a"
    low, high = _num(min(known), digits), _num(max(known), digits)
    text = low if low == high else f"{low}–{high}"
    return text + (" (n/a in some runs)" if len(known) < len(values) else "")


def _ratio_text(ratio: float) -> str:
    return f"{ratio:.{2 if ratio >= 0.1 else 3}f}×"


def _ratio_span(ratios: list[float | None]) -> str:
    known = [r for r in ratios if r is not None]
    if not known:
        return "—"
    low, high = _ratio_text(min(known)), _ratio_text(max(known))
    return low if low == high else f"{low[:-1]}–{high}"


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
        ratio: float | str | None = None,
        target: str = "—",
        met: bool | str | None = None,
    ) -> None:
        """Append a row (`ratio` and `met` as text when they are already written out)."""
        self.rows.append(
            {
                "metric": metric,
                "chatsvc": chatsvc,
                "baseline": baseline,
                "ratio": ratio
                if isinstance(ratio, str)
                else "—"
                if ratio is None
                else _ratio_text(ratio),
                "target": target,
                "met": met if isinstance(met, str) else _met(met),
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
    """The table's rows: the headline's first, then the old shapes' (or the ceiling's)."""
    table = Table()
    if "headline" in results:
        _headline_rows(table, results)
    if "load" in results:
        _old_rows(table, results)
    if "ceiling" in results:
        _ceiling_rows(table, results)
    return table.rows


Getter = Callable[[dict[str, Any]], float | None]
Check = Callable[[float | None, float | None], bool | None]


def _server_cpu(run: dict[str, Any]) -> float | None:
    return run["cpu_us_per_chunk"]["server"]  # type: ignore[no-any-return]


def _server_pg_cpu(run: dict[str, Any]) -> float | None:
    cpu = run["cpu_us_per_chunk"]
    return (
        None
        if cpu["server"] is None or cpu["postgres"] is None
        else cpu["server"] + cpu["postgres"]
    )


def _headline_rows(table: Table, results: dict[str, Any]) -> None:
    """Per level, chatsvc next to the baseline; each figure a range over the runs."""
    head = results["headline"]
    bound, bound_level = head["bound_ms"], head["bound_level"]
    levels = [level["streams"] for level in head["runs"][0]["levels"]]
    rate = 1 / head["shape"]["delay_s"]

    def metric(
        label: str,
        unit: str,
        get: Getter,
        digits: int = 0,
        *,
        ratio: bool = False,
        baseline: Getter | str | None = None,
        target: str = "—",
        check: Check | None = None,
        only_at: int | None = None,
    ) -> None:
        for index, n in enumerate(levels):
            at_level = [run["levels"][index] for run in head["runs"]]
            ours = [get(level["chatsvc"]) for level in at_level]
            base_get = get if baseline is None else baseline
            theirs = (
                [] if isinstance(base_get, str) else [base_get(lv["baseline"]) for lv in at_level]
            )
            checked = check is not None and (only_at is None or n == only_at)
            table.add(
                f"{label} ({unit}{n} answers)",
                _span(ours, digits),
                base_get if isinstance(base_get, str) else _span(theirs, digits),
                ratio=_ratio_span([_ratio(o, t) for o, t in zip(ours, theirs, strict=True)])
                if ratio and theirs
                else None,
                target=target if checked else "—",
                met=_met_runs([check(o, t) for o, t in zip(ours, theirs or ours, strict=True)])
                if checked and check is not None
                else None,
            )

    labels = iter(HEADLINE_ROWS)
    metric(
        next(labels),
        "ms, ",
        lambda r: r["first_text_p50_ms"],
        1,
        target="≤ baseline + 5 ms",
        check=lambda o, t: None if o is None or t is None else o <= t + 5,
    )
    metric(next(labels), "ms, ", lambda r: r["first_text_p99_ms"], 1)
    metric(next(labels), "ms, ", lambda r: r.get("first_text_commit_ms"), 1, baseline="—")
    metric(next(labels), "ms, ", lambda r: r["p50_ms"], 1)
    metric(
        next(labels),
        "ms, ",
        lambda r: r["p99_ms"],
        1,
        ratio=True,
        target=f"≤ {bound} ms",
        check=lambda o, t: _le(o, bound),
        only_at=bound_level,
    )
    metric(next(labels), "µs, ", _server_cpu, ratio=True)
    metric(
        next(labels),
        "µs, ",
        _server_pg_cpu,
        ratio=True,
        baseline=_server_cpu,
        target="≤ 1.25×",
        check=lambda o, t: _le(_ratio(o, t), 1.25),
    )
    metric(next(labels), "xids, ", lambda r: r["write_transactions_per_s_per_100"], 1, baseline="0")
    metric(
        next(labels), "pg_stat_database, ", lambda r: r["commits_per_s_per_100"], 1, baseline="0"
    )
    metric(
        next(labels),
        "",
        lambda r: r["wal_per_content_byte"],
        1,
        baseline="—",
        target="≤ 10",
        check=lambda o, t: _le(o, 10),
    )
    _single_answer_wal_row(table, next(labels), head)
    metric(
        next(labels), f"tokens/s per answer, asked {rate:g}, ", lambda r: r["rate_per_stream"], 1
    )
    metric(next(labels), "ms, ", lambda r: r.get("loop_lag_ms"), 1, baseline="—")
    label = next(labels)
    for index, n in enumerate(levels):
        at_level = [run["levels"][index] for run in head["runs"]]
        table.add(
            f"{label} ({n} answers, whole run)",
            " · ".join(_outcomes(level["chatsvc"]) for level in at_level),
            " · ".join(_outcomes(level["baseline"]) for level in at_level),
        )


def _outcomes(run: dict[str, Any]) -> str:
    return f"{run['answers_ok']} / {run['answers_failed']} / {run['answers_refused']}"


def _single_answer_wal_row(table: Table, label: str, head: dict[str, Any]) -> None:
    """WAL per content byte of one answer alone, with its physical floor in the label."""
    wals = [run["wal"] for run in head["runs"]]
    first = wals[0]
    floor = _span([w["floor"] for w in wals], 2)
    fixed = _span([w["fixed_bytes"] for w in wals])
    table.add(
        f"{label} ({first['content_bytes']:,} bytes in {first['chunks']} × "
        f"{first['chunk_chars']} chars, median of {len(first['wal_bytes'])}; floor {floor}: 2 + "
        f"{fixed} bytes any answer costs (a one-token answer's WAL less its text twice) / "
        f"{first['content_bytes']:,})",
        _span([w["wal_per_byte"] for w in wals], 1),
        target="≤ 10",
        met=_met_runs([_le(w["wal_per_byte"], 10) for w in wals]),
    )


def _ceiling_rows(table: Table, results: dict[str, Any]) -> None:
    ceiling = results["ceiling"]

    def most(result: dict[str, Any]) -> str:
        return ("≥ " if result["capped"] else "") + str(result["max_streams"])

    table.add(
        f"{CEILING_ROWS[0]} (p99 ≤ {ceiling['bound_ms']} ms at {ceiling['rate']:g} tokens/s, "
        "chatsvc A and B on one Postgres)",
        most(ceiling["chatsvc"]),
        most(ceiling["baseline"]),
        ratio=_ratio(ceiling["chatsvc"]["max_streams"], ceiling["baseline"]["max_streams"] or None),
    )


def _old_rows(table: Table, results: dict[str, Any]) -> None:
    params = results["params"]
    n = params["streams"]
    ours, base = results["load"]["chatsvc"], results["load"]["baseline"]
    level = common_level(results["ladder"])
    labels = iter(OLD_ROWS)
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


def _load_runs(results: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every load run (or ladder step) of the results, each with its `core_percent`."""
    yield from results.get("load", {}).values()
    for ladder in results.get("ladder", {}).values():
        yield from ladder["levels"]
    for run in results.get("headline", {}).get("runs", []):
        for level in run["levels"]:
            yield level["chatsvc"]
            yield level["baseline"]
    ceiling = results.get("ceiling", {})
    for system in ("chatsvc", "baseline"):
        yield from ceiling.get(system, {}).get("steps", [])


def _interference(results: dict[str, Any]) -> str:
    """How much else ran on the machine: not counted in any figure, but it competes."""
    shares = [run["core_percent"]["other"] for run in _load_runs(results)]
    if not shares:
        return f"other processes: {results['machine']['busy_before']}% before the run"
    return (
        f"other processes: {results['machine']['busy_before']}% of the machine before the run; "
        f"{min(shares)}–{max(shares)}% of a core during the load runs (mean "
        f"{sum(shares) / len(shares):.0f}%): not counted, but they compete for the cores"
    )


def _parameters(results: dict[str, Any]) -> list[str]:
    """What was measured, in a line per part of the run."""
    p = results["params"]
    env = ", ".join(f"{k}={v}" for k, v in results.get("chatsvc_env", {}).items())
    lines = []
    for part in ("headline", "ceiling"):
        if part in results:
            shape, coalesce = results[part]["shape"], results[part]["coalesce_ms"]
            lines.append(
                f"{part}: answers of {shape['chunks']} tokens of {shape['size']} chars at "
                f"{1 / shape['delay_s']:g} tokens/s back to back, "
                f"{p[part + '_window_s']:g} s measured after a ramp of one answer"
                + (f", {p['runs']} run{'s' if p['runs'] > 1 else ''}" if part == "headline" else "")
                + f"; chatsvc's CHATSVC_CHECKPOINT_MIN_MS {coalesce} ms (bound {coalesce + 30} ms)"
            )
    if "load" in results:
        lines.append(
            f"old shape: {p['streams']} streams at {p['rate']:g} chunks/s of {p['chunk_chars']} "
            f"chars, answers of {p['answer_s']:g} s back to back, {p['window_s']:g} s measured "
            f"after a ramp of one answer; checkpoint {p['checkpoint_ms']} ms"
        )
    lines.append(
        f"lease {p['lease_s']:g} s, heartbeat {p['heartbeat_s']:g} s; chatsvc and baseline each "
        "as 2 single-worker gunicorn instances, chatsvc answers followed on the other one"
        + (f"; chatsvc A and B with {env}" if env else "")
    )
    return lines


def markdown(header: tuple[str, ...], cells: Sequence[tuple[str, ...]]) -> list[str]:
    """A Markdown table, readable as is."""
    table = [header, *cells]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [
        line(row) for row in cells
    ]


def render(results: dict[str, Any]) -> str:
    """The header, the table (Markdown, readable as is), and notes."""
    m = results["machine"]
    mode = results.get("mode", "full")
    lines = [
        f"chatsvc benchmark{'' if mode == 'full' else ', ' + mode}"
        f"{' (smoke)' if results['smoke'] else ''} — {m['date']}, {results['elapsed_s']:.0f} s",
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, {m['os']}; "
        f"Python {m['python']}; PostgreSQL {m['postgres']}; litellm {m['litellm']}, "
        f"gevent {m['gevent']}, gunicorn {m['gunicorn']}; git {m['git']}",
        *_parameters(results),
        _interference(results),
        "",
    ]
    header = ("metric", "chatsvc", "baseline", "ratio", "target", "met?")
    keys = ("metric", "chatsvc", "baseline", "ratio", "target", "met")
    lines += markdown(header, [tuple(row[k] for k in keys) for row in results["rows"]])
    if "ceiling" in results:
        lines += ceiling_tables(results["ceiling"])
    lines += ["", *notes(results)]
    return "\n".join(lines)


def ceiling_tables(ceiling: dict[str, Any]) -> list[str]:
    """A table per system: each step of the ladder, and what each resource did in it."""
    out = []
    header = (
        "answers",
        "p50 ms",
        "p99 ms",
        "tokens/s",
        "failed / refused",
        "first text p50 ms",
        "CPU % servers (each)",
        "Postgres",
        "fake LLM",
        "load gen",
        f"machine (of {100 * ceiling['cores']})",
        "xids/s",
        "commits/s",
        "WAL MB/s",
        "WAL writes/s",
        "WAL syncs/s",
        "wait events (mean backends)",
        "ran out",
        "ok",
    )
    for system in ("chatsvc", "baseline"):
        cells = []
        for s in ceiling[system]["steps"]:
            core = s["core_percent"]
            io = s["wal_io_per_s"]
            waits = ", ".join(f"{w['event']} {w['mean']:g}" for w in s["waits"]["top"][:4])
            cells.append(
                (
                    str(s["streams"]),
                    _num(s["p50_ms"], 1),
                    _num(s["p99_ms"], 1),
                    _num(s["rate_per_stream"], 1),
                    f"{s['failed']} / {s['refused']}",
                    _num(s["first_text_p50_ms"], 1),
                    f"{_num(core['server'])} ({' / '.join(map(str, s['server_core_percent']))})",
                    _num(core["postgres"]),
                    _num(core["llm"]),
                    _num(core["loadgen"]),
                    _num(s["machine_percent"]),
                    _num(s["write_transactions_per_s"]),
                    _num(s["commits_per_s"]),
                    _num(s["wal_mb_per_s"], 2),
                    _num(io.get("writes")),
                    _num(io.get("syncs")),
                    waits or "none",
                    ", ".join(s["ran_out"]) or "—",
                    "yes" if s["ok"] else "**no**",
                )
            )
        out += [
            "",
            f"ceiling, {system} (p99 ≤ {ceiling['bound_ms']} ms):",
            *markdown(header, cells),
        ]
    steps = ceiling["chatsvc"]["steps"]
    if steps:
        out.append(f"(WAL writes and syncs from {steps[0]['wal_io_source']})")
    return out


def _headline_notes(results: dict[str, Any]) -> list[str]:
    """Each headline run's load runs: answers, failures, CPU by component."""
    out = []
    for number, run in enumerate(results["headline"]["runs"], 1):
        wal = run["wal"]
        out.append(
            f"headline run {number}: one answer alone {wal['wal_bytes']} bytes of WAL in "
            f"{wal['transactions']} write transactions; a one-token answer "
            f"{wal['one_token_wal_bytes']} bytes"
        )
        for level in run["levels"]:
            for system in ("chatsvc", "baseline"):
                out.append(
                    f"headline run {number}, {level['streams']} answers, "
                    + _run_note(system, level[system])
                )
    return out


def _run_note(name: str, run: dict[str, Any]) -> str:
    cpu = run["cpu_us_per_chunk"]
    unit = "token" if run.get("clock") else "chunk"
    return (
        f"{name}: {run['answers_ok']} answers ({run['answers_failed']} failed, "
        f"{run['answers_refused']} refused as busy), "
        f"{run['chunks_received_in_window']:,} {unit}s in the {run['window_s']} s window "
        f"({run['rate_per_stream'] or 0:.1f} {unit}s/s each); CPU µs/{unit}: "
        + ", ".join(f"{k} {_num(v)}" for k, v in cpu.items())
        + f"; other processes used {run['core_percent']['other']}% of a core"
        + (f"; errors: {run['errors']}" if run["errors"] else "")
    )


def notes(results: dict[str, Any]) -> list[str]:
    """The details behind the rows: breakdowns, ladders, errors, profiles."""
    out = _headline_notes(results) if "headline" in results else []
    for system in ("chatsvc", "baseline") if "ceiling" in results else ():
        for s in results["ceiling"][system]["steps"]:
            if s["errors"] or s["waits"]["error"]:
                out.append(
                    f"ceiling {system} {s['streams']}: {s['errors']} {s['waits']['error'] or ''}"
                )
    if "load" not in results:
        return out + _profile_notes(results) + list(results.get("notes", []))
    return out + _old_notes(results)


def _profile_notes(results: dict[str, Any]) -> list[str]:
    """The profiles' summaries (`--profile`, in the full run and with `--headline`)."""
    out = []
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
    return out


def _old_notes(results: dict[str, Any]) -> list[str]:
    """The old shapes' details."""
    out = []
    for name, run in results["load"].items():
        out.append(_run_note(name, run))
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
    out += _profile_notes(results)
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
