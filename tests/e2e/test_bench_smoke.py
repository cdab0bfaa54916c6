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


@pytest.mark.timeout(300)
def test_bench_smoke_prints_every_row_of_the_table(tmp_path: Path) -> None:
    results = tmp_path / "bench.json"
    argv = ["--smoke", "--json", str(results), "--out", str(tmp_path / "out")]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
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
