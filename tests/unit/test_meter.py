"""The benchmark's CPU meter: a process tree's CPU, each child counted once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks import meter


def test_a_child_that_ended_in_the_window_is_counted() -> None:
    before = meter.snapshot(os.getpid())
    subprocess.run([sys.executable, "-c", "sum(range(3 * 10**6))"], check=True)
    after = meter.snapshot(os.getpid())
    assert after.reaped > before.reaped
    assert meter.cpu_between(before, after) >= after.reaped - before.reaped


def test_a_walk_during_which_a_child_was_reaped_is_taken_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads = iter([1.0, 2.0, 2.0, 2.0])  # the first walk sees the total move; the second not
    monkeypatch.setattr(meter, "_reaped", lambda root: next(reads))
    assert meter.snapshot(os.getpid()).reaped == 2.0
