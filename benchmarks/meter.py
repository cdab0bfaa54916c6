"""Measuring: CPU seconds of process trees over a window, and latency percentiles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class TreeSnapshot:
    """CPU seconds (user + system) of a process and its descendants at one moment."""

    live: dict[tuple[int, float], float]  # (pid, create_time) -> own CPU seconds
    reaped: float  # CPU of children the root has waited for (psutil children_*)


# A child that exits while the tree is walked moves its CPU from the live processes
# to the root's reaped total between the two readings; the walk is then taken again.
SNAPSHOT_ATTEMPTS = 5


def snapshot(pid: int | None, *, tree: bool = True) -> TreeSnapshot:
    """The CPU a process tree (or, with tree=False, the process alone) has used so far.

    The root's reaped total is read before and after the walk: equal, every child was
    counted once, live or reaped (were it read only before, a child that ended during
    the walk would be in neither; only after, in both).
    """
    if pid is None:
        return TreeSnapshot({}, 0.0)
    taken = TreeSnapshot({}, 0.0)
    for _ in range(SNAPSHOT_ATTEMPTS):
        try:
            root = psutil.Process(pid)
            reaped = _reaped(root) if tree else 0.0
            processes = [root, *root.children(recursive=True)] if tree else [root]
            taken = TreeSnapshot(_own_cpu(processes), reaped)
            if not tree or _reaped(root) == reaped:
                return taken
        except psutil.NoSuchProcess:
            return TreeSnapshot({}, 0.0)
    return taken  # children kept ending: the last walk, as good as a single one


def _reaped(root: psutil.Process) -> float:
    times = root.cpu_times()
    return float(times.children_user + times.children_system)


def _own_cpu(processes: list[psutil.Process]) -> dict[tuple[int, float], float]:
    live = {}
    for process in processes:
        try:
            with process.oneshot():
                key = (process.pid, process.create_time())
                own = process.cpu_times()
            live[key] = own.user + own.system
        except psutil.NoSuchProcess:
            continue
    return live


def cpu_between(before: TreeSnapshot, after: TreeSnapshot) -> float:
    """CPU seconds the tree used between two snapshots.

    A child that ended in between is counted through the root's reaped total, which
    holds its whole life; what it had used before the window is taken back out.
    """
    used = after.reaped - before.reaped
    for key, seconds in after.live.items():
        used += seconds - before.live.get(key, 0.0)
    for key, seconds in before.live.items():
        if key not in after.live:
            used -= seconds
    return max(used, 0.0)


def machine_busy() -> float:
    """CPU seconds all cores have spent busy since boot (everything but idle and iowait)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def rss_bytes(pid: int) -> int:
    """Resident memory of one process."""
    return int(psutil.Process(pid).memory_info().rss)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])
