"""Profiling a worker under load with py-spy, summarised by self time.

py-spy samples the worker's Python stacks from outside (ptrace), so the worker
runs unmodified; idle time (a gevent worker waiting in epoll) is not sampled.
The raw (collapsed-stack) output is kept next to the results, and summarised as:
the top functions by self time, self time by library, and time by the innermost
chatsvc module on the stack (which part of chatsvc caused the work).
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

LIBRARIES = {
    "litellm": "litellm",
    "openai": "openai/httpx",
    "httpx": "openai/httpx",
    "httpcore": "openai/httpx",
    "h11": "openai/httpx",
    "anyio": "openai/httpx",
    "psycopg": "psycopg",
    "psycopg_pool": "psycopg",
    "gevent": "gevent",
    "gunicorn": "gunicorn",
    "flask": "flask/werkzeug",
    "werkzeug": "flask/werkzeug",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic",
    "json": "json",
    "re": "re",
}


def py_spy() -> str | None:
    """The py-spy executable, if installed (next to this Python first)."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, out: Path, rate: int = 100) -> subprocess.Popen[bytes] | str:
    """Start sampling a process for `seconds`; returns the py-spy process, or why not."""
    executable = py_spy()
    if executable is None:
        return "py-spy is not installed (pip install py-spy)"
    argv = [executable, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    # --gil: only the thread running Python (gevent's idle thread-pool threads are noise).
    argv += ["--rate", str(rate), "--gil", "--format", "raw", "--output", str(out)]
    with out.with_suffix(".log").open("wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen[bytes] | str, out: Path, timeout: float = 60) -> dict[str, Any]:
    """Wait for py-spy and summarise what it recorded (or say what went wrong)."""
    if isinstance(proc, str):
        return {"error": proc}
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"error": "py-spy did not finish"}
    if proc.returncode != 0 or not out.exists():
        log = out.with_suffix(".log")
        text = log.read_text(errors="replace")[-500:] if log.exists() else ""
        return {"error": f"py-spy failed ({proc.returncode}): {text.strip()}"}
    return summarize(out)


def _frames(stack: str) -> list[tuple[str, str]]:
    frames = []
    for raw in stack.split(";"):
        match = FRAME.match(raw)
        if match is None:
            frames.append((raw, ""))
        else:
            frames.append((match["func"], match["file"]))
    return frames


def library(file: str) -> str:
    """Which library a source file belongs to (py-spy prints paths relative to sys.path)."""
    top = file.split("/", 1)[0]
    if top in ("chatsvc", "benchmarks"):
        return f"{top}.{Path(file).stem}"
    if top.endswith(".py"):
        return "stdlib/other"
    return LIBRARIES.get(top, top)


def summarize(raw: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by self time, self time per library, time per innermost chatsvc module."""
    self_time: collections.Counter[str] = collections.Counter()
    by_library: collections.Counter[str] = collections.Counter()
    by_module: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        total += count
        func, file = frames[-1]
        self_time[f"{func} ({file})"] += count
        by_library[library(file)] += count
        ours = [library(f) for _, f in frames if f.startswith(("chatsvc/", "benchmarks/"))]
        by_module[ours[-1] if ours else "(no chatsvc frame)"] += count

    def share(counter: collections.Counter[str], limit: int) -> list[dict[str, Any]]:
        return [
            {"frame": name, "samples": n, "percent": round(100 * n / total, 1)}
            for name, n in counter.most_common(limit)
        ]

    return {
        "file": str(raw),
        "samples": total,
        "top_self": share(self_time, top),
        "self_by_library": share(by_library, 12),
        "by_chatsvc_module": share(by_module, 12),
    }
