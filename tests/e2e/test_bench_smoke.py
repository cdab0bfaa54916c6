"""The benchmark's smoke run: it must keep producing its table (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.report import ROWS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _bench(tmp_path: Path, *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`scripts/bench` with these arguments, its profiles and logs under tmp_path."""
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.run", *argv, "--out", str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.timeout(300)
def test_bench_smoke_prints_every_row_of_the_table(tmp_path: Path) -> None:
    results = tmp_path / "bench.json"
    done = _bench(tmp_path, "--smoke", "--json", str(results), timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    header, *table = lines
    assert header.split("|")[1].strip() == "metric"
    metrics = [line.split("|")[1].strip() for line in table]
    # A headline row is printed once per level: each printed metric is named by the longest
    # label it starts with, and the labels, repeats collapsed, are ROWS in order.
    named = [
        max((label for label in ROWS if m.startswith(label)), key=len, default=m) for m in metrics
    ]
    assert [label for i, label in enumerate(named) if i == 0 or named[i - 1] != label] == list(
        ROWS
    ), metrics
    kept = json.loads(results.read_text())
    assert [row["metric"] for row in kept["rows"]] == metrics


@pytest.mark.timeout(150)
def test_soak_smoke_reads_every_process_and_runs_the_whole_mix(tmp_path: Path) -> None:
    results = tmp_path / "soak.json"
    argv = ["--soak", "--smoke", "--soak-minutes", "0.25", "--json", str(results)]
    done = _bench(tmp_path, *argv, timeout=120)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    assert "PASSED" in done.stdout
    kept = json.loads(results.read_text())
    assert kept["passed"] and kept["failures"] == []
    assert set(kept["readings"]) == {"start", "middle", "end"}
    kinds = {row["kind"] for row in kept["rows"]}
    assert kinds == {"chatsvc master", "chatsvc worker", "fakellm", "loadgen", "postgres"}
    for row in kept["rows"]:
        assert None not in (row["start"], row["middle"], row["end"]), row
    backends = {row["process"]: row for row in kept["rows"] if row["metric"] == "backends"}
    assert backends["postgres: (all)"]["start"] > 0, backends
    answers = kept["answers"]
    assert answers["failed"] == 0, answers["errors"]
    for what in ("completed", "cancelled", "reconnects", "with_reasoning", "with_tools"):
        assert answers[what] >= 1, (what, answers)
    assert kept["streaming_left"] == 0


@pytest.mark.timeout(90)
def test_pg_ceiling_smoke_measures_every_step(tmp_path: Path) -> None:
    results = tmp_path / "pg.json"
    done = _bench(tmp_path, "--pg-ceiling", "--smoke", "--json", str(results), timeout=60)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "Ceiling of one Postgres" in done.stdout
    kept = json.loads(results.read_text())
    assert kept["processes"] == 2 and kept["bound_ms"] == kept["coalesce_ms"] + 30
    assert [step["answers"] for step in kept["steps"]] == [10, 20][: len(kept["steps"])]
    assert kept["steps"], kept
    for step in kept["steps"]:
        assert step["tokens_measured"] > 0 and step["p50_ms"] <= step["p99_ms"], step
        assert step["completed"] >= step["started"] > 0 and step["failed"] == 0, step
        assert step["xids_per_s"] > 0 and step["commits_per_s"] > 0 and step["wal_mb_per_s"] > 0
        assert step["commits_per_s_per_100"] > 0
        assert step["emulator_core_percent"] and len(step["emulator_core_percent"]) == 2
        assert step["waits"]["samples"] > 0
        assert isinstance(step["ran_out"], list)
        assert step["postgres_core_percent"] is None or step["postgres_core_percent"] >= 0
    if not kept["notes"]:  # a private Postgres: its CPU is ours to see
        # In some step: a 2.5 s step's few tens of milliseconds read as 0 when a backend
        # exits while the tree is read (its CPU then neither live nor yet reaped).
        assert any(
            step["postgres_core_percent"] > 0 and step["pg_cpu_us_per_answer_second"] > 0
            for step in kept["steps"]
        ), kept["steps"]
