"""The soak's growth verdict: readings in, verdict out (benchmarks/footprint.py)."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.footprint import FAILING, MB, Noise, judge, rows, verdict

NOISE = Noise(rss_mb=20, rss_fraction=0.10, count=10, backends=3)


@pytest.mark.parametrize(
    ("metric", "values", "expected"),
    [
        # flat, or moving within noise
        ("rss", (250 * MB, 252 * MB, 255 * MB), "ok"),
        ("fds", (29, 35, 31), "ok"),
        # a one-off rise before the middle reading (caches filled), then flat
        ("rss", (250 * MB, 300 * MB, 305 * MB), "step"),
        ("tcp", (8, 30, 28), "step"),
        # memory that keeps growing through the run: over 20 MB and over 10% late
        ("rss", (250 * MB, 290 * MB, 330 * MB), "grows"),
        # over 20 MB late but under 10% of a large process: noise
        ("rss", (900 * MB, 1000 * MB, 1090 * MB), "ok"),
        # over 10% late but under 20 MB of a small process: noise
        ("rss", (40 * MB, 45 * MB, 55 * MB), "ok"),
        # descriptors and connections: more than the constant between middle and end
        ("fds", (29, 40, 51), "grows"),
        ("tcp", (8, 8, 18), "ok"),
        ("tcp", (8, 8, 19), "grows"),
        ("backends", (14, 14, 17), "ok"),
        ("backends", (14, 15, 19), "grows"),
        # a reading without a value (the process was gone)
        ("rss", (250 * MB, None, 250 * MB), "missing"),
    ],
)
def test_verdict(metric: str, values: tuple[float | None, ...], expected: str) -> None:
    assert verdict(metric, values, NOISE) == expected


def test_a_failing_verdict_is_one_that_fails_the_soak() -> None:
    assert verdict("rss", (250 * MB, 290 * MB, 330 * MB), NOISE) in FAILING
    assert verdict("rss", (250 * MB, 300 * MB, 305 * MB), NOISE) not in FAILING


def test_a_replaced_process_is_restarted_whatever_its_figures() -> None:
    assert judge("rss", (250 * MB, 250 * MB, 250 * MB), [[7], [7], [9]], NOISE) == "restarted"
    assert judge("rss", (250 * MB, 250 * MB, 250 * MB), [[7], [7], [7]], NOISE) == "ok"


def _reading(worker_rss: float, cluster_rss: float, backends: float) -> dict[str, Any]:
    return {
        "processes": {
            "chatsvc-A worker": {"kind": "chatsvc worker", "pids": [7], "rss": worker_rss},
            "postgres cluster": {"kind": "postgres", "pids": [3], "rss": cluster_rss, "uss": MB},
        },
        "backends": {"chatsvc": backends},
    }


def test_rows_judge_each_figure_and_leave_the_clusters_rss_to_its_uss() -> None:
    readings = [_reading(250 * MB, 300 * MB, 10), _reading(260 * MB, 400 * MB, 10)]
    readings.append(_reading(330 * MB, 600 * MB, 20))
    found = {(row["process"], row["metric"]): row for row in rows(readings, NOISE)}
    assert found["chatsvc-A worker", "rss"]["verdict"] == "grows"
    assert found["chatsvc-A worker", "rss"]["growth"] == 80 * MB
    assert found["chatsvc-A worker", "fds"]["verdict"] == "missing"
    assert ("chatsvc-A worker", "uss") not in found
    assert found["postgres cluster", "rss"]["verdict"] == "info"
    assert found["postgres cluster", "uss"]["verdict"] == "ok"
    assert found["postgres: chatsvc", "backends"]["verdict"] == "grows"


def test_a_pool_that_ends_within_its_size_is_bounded_not_growing() -> None:
    assert verdict("backends", (13, 15, 20), NOISE, ceiling=20) == "bounded"
    assert verdict("backends", (13, 15, 21), NOISE, ceiling=20) == "grows"
    assert "bounded" not in FAILING


def test_the_clusters_private_memory_may_rise_by_what_new_backends_bring() -> None:
    readings = [_reading(250 * MB, 300 * MB, 14), _reading(250 * MB, 300 * MB, 15)]
    readings.append(_reading(250 * MB, 300 * MB, 20))
    for reading, uss in zip(readings, (60, 80, 102), strict=True):
        reading["backends"]["(all)"] = reading["backends"]["chatsvc"]
        reading["processes"]["postgres cluster"]["uss"] = uss * MB
    found = {(row["process"], row["metric"]): row for row in rows(readings, NOISE, {"chatsvc": 20})}
    assert found["postgres cluster", "uss"]["verdict"] == "ok"  # 22 MB, 5 more backends
    assert found["postgres: chatsvc", "backends"]["verdict"] == "bounded"
    assert found["postgres: (all)", "backends"]["verdict"] == "info"
    # without new backends the same rise is growth
    readings[2]["backends"] = readings[1]["backends"]
    found = {(row["process"], row["metric"]): row for row in rows(readings, NOISE)}
    assert found["postgres cluster", "uss"]["verdict"] == "grows"
