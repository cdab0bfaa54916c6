"""The headline: a real model's shape (4-character tokens at 50 a second, 10 s answers), at
10, 50 and 200 concurrent answers, chatsvc next to the baseline in the same run; and the WAL
of one such answer generated alone, next to its physical floor.

Each run measures every level for both systems, baseline first; `Params.runs` repeats the
whole measurement in the same process (same services), so that each figure becomes a
range. The floor of WAL per content byte is 2 (the text is written once as checkpoint
chunks while it streams, once as `messages.content` at the end) plus what any answer
costs whatever its length, measured as the WAL of a one-token answer minus its own text
twice.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks import loadrun, phases
from benchmarks.context import Bench, say


def warm_up(bench: Bench) -> None:
    """A few short answers on each system (litellm's first calls, the pools, the caches)."""
    shape = loadrun.headline_shape(bench.params, answer_s=1.0)
    for system in ("chatsvc", "baseline"):
        streams = min(10, *bench.params.headline_levels)
        warm = loadrun.load_run(bench, system, streams, 1.0, shape=shape)
        if warm["answers_failed"]:
            say(f"warm-up of {system}: {warm['answers_failed']} failed: {warm['errors']}")


def headline(bench: Bench) -> dict[str, Any]:
    """Every run: the single-answer WAL, then each level, baseline then chatsvc."""
    p = bench.params
    shape = loadrun.headline_shape(p)
    runs = []
    for number in range(1, p.runs + 1):
        say(f"headline run {number} of {p.runs}: WAL of one answer alone")
        run: dict[str, Any] = {"wal": single_answer_wal(bench), "levels": []}
        for streams in p.headline_levels:
            level: dict[str, Any] = {"streams": streams}
            for system in ("baseline", "chatsvc"):
                say(f"headline run {number}: {system}, {streams} answers")
                level[system] = loadrun.load_run(
                    bench, system, streams, p.headline_window_s, shape=shape
                )
            run["levels"].append(level)
        runs.append(run)
    return {
        "shape": {"chunks": shape.chunks, "size": shape.size, "delay_s": shape.delay},
        "coalesce_ms": bench.coalesce_ms,
        "bound_ms": bench.coalesce_ms + 30,
        "bound_level": p.headline_bound_level,
        "runs": runs,
    }


def single_answer_wal(bench: Bench) -> dict[str, Any]:
    """WAL per content byte of one headline answer generated alone (the median of a few), and
    the floor: 2 bytes per byte plus the fixed cost of any answer over this one's bytes."""
    p = bench.params
    shape = loadrun.headline_shape(p)
    size, delay = shape.size, shape.delay
    phases.vacuum(bench.db)
    phases.wal_answer(bench, 2, size, delay, clock=True)  # warms the pages up; not counted
    tiny = [_measured(bench, 1, size, delay) for _ in range(p.headline_wal_repeats)]
    full = [_measured(bench, shape.chunks, size, delay) for _ in range(p.headline_wal_repeats)]
    content_bytes = int(statistics.median(r["bytes"] for r in full))
    fixed = statistics.median(r["wal"] - 2 * r["bytes"] for r in tiny)
    wal = statistics.median(r["wal"] for r in full)
    return {
        "chunks": shape.chunks,
        "chunk_chars": size,
        "content_bytes": content_bytes,
        "wal_bytes": [r["wal"] for r in full],
        "transactions": [r["xid"] for r in full],
        "wal_per_byte": round(wal / content_bytes, 2),
        "fixed_bytes": round(fixed),
        "one_token_wal_bytes": [r["wal"] for r in tiny],
        "floor": round(2 + fixed / content_bytes, 2),
    }


def _measured(bench: Bench, chunks: int, size: int, delay: float) -> dict[str, int]:
    """One clocked answer alone: its WAL, write transactions and content bytes."""
    answer = phases.wal_answer(bench, chunks, size, delay, clock=True)
    text = phases.content_of(bench.db, answer["id"])
    return {"wal": answer["wal"], "xid": answer["xid"], "bytes": len(text.encode())}
