"""What every mode of the bench does around its measurements: progress lines, a temporary
directory under a time limit, and one exit code however the run ends.

The full run, `--soak` and `--pg-ceiling` each start their own processes inside
`workspace`, whose stack stops them and removes the directory when the run ends,
and run it all through `guarded`, which turns Ctrl-C, an error or the time limit
into an exit code once everything has been stopped.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import gevent
import psutil

from benchmarks.services import Service

Say = Callable[[str], None]


class TimeLimit(Exception):
    """The run took longer than its time limit."""


def progress(mode: str) -> Say:
    """A function that prints progress lines of `mode`, on stderr (stdout is for the table)."""

    def say(message: str) -> None:
        print(f"[{mode} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    return say


def busy_before(say: Say) -> float:
    """How busy the machine is (% of all cores) before the run starts anything: all of it
    other processes'; said when that will make the numbers noisy."""
    busy = float(psutil.cpu_percent(interval=1.0))
    if busy > 20:
        say(f"the machine is already {busy:.0f}% busy: expect noisy numbers")
    return busy


@contextlib.contextmanager
def workspace(
    prefix: str, out: Path, max_seconds: float, *, keep_logs: bool = True
) -> Iterator[tuple[contextlib.ExitStack, Path, Path]]:
    """A stack to register what the run starts, its temporary directory, and the directory for
    the services' logs (copied to `out`/logs at the end when `keep_logs`); TimeLimit is raised
    in the run after `max_seconds`."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    logs = tmp / "logs"
    if keep_logs:
        logs.mkdir()
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack, gevent.Timeout(max_seconds, TimeLimit):
        stack.callback(shutil.rmtree, tmp, True)
        if keep_logs:
            stack.callback(shutil.copytree, logs, out / "logs", dirs_exist_ok=True)
        yield stack, tmp, logs


def guarded(what: str, say: Say, run: Callable[[], int]) -> int:
    """`run`'s exit code; 130 on Ctrl-C, 1 when it failed or ran out of time (by then, the
    workspace has stopped everything it started)."""
    try:
        return run()
    except KeyboardInterrupt:
        say("interrupted; everything it started is stopped")
        return 130
    except (TimeLimit, Exception):
        traceback.print_exc()
        say(f"{what}; everything it started is stopped")
        return 1


def tell_logs(say: Say, services: list[Service]) -> None:
    """The end of each service's log, for a run that is failing."""
    for service in services:
        say(f"--- end of {service.name}'s log ---\n{service.tail(15)}")
