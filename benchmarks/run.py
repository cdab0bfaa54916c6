"""`python -m benchmarks.run` (`scripts/bench`): measure what durability costs, print one table.

Starts, on 127.0.0.1: a private embedded Postgres (or a scratch database on
DATABASE_URL's server), the fake OpenAI-compatible LLM, two single-worker chatsvc
instances and two single-worker baseline instances; runs the phases; prints the
table and writes the results as JSON. Everything it started is stopped, and its
temporary directory removed, however it ends (Ctrl-C, an error, its time limit).

Modes: the full run (the headline rows, then the old shapes' rows, the subscribers
and the takeover); `--headline`, the headline rows alone (`--runs N` repeats them);
`--ceiling`, the most answers one Postgres holds at the headline pace.
"""

from gevent import monkey

monkey.patch_all()  # before psycopg is imported, so its waits yield to other greenlets

import argparse
import contextlib
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import gevent
import gevent.pool

from benchmarks import (
    ceiling,
    context,
    headline,
    load,
    loadrun,
    pgceiling,
    phases,
    report,
    session,
    soak,
)
from benchmarks.context import say
from benchmarks.services import (
    Database,
    Service,
    chatsvc_cli,
    free_port,
    private_postgres,
    scratch_database,
    stop_all,
)
from chatsvc.config import Settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (for the tests)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--headline", action="store_true", help="only the headline rows (a real model's shape)"
    )
    mode.add_argument(
        "--ceiling", action="store_true", help="the most answers one Postgres holds, and why"
    )
    parser.add_argument("--runs", type=int, help="repeat the headline measurement N times")
    parser.add_argument(
        "--streams", type=int, help="concurrent answers of the main load run (old shape)"
    )
    parser.add_argument(
        "--window",
        type=float,
        help="seconds measured per load run (the mode's: old shape, headline or ceiling)",
    )
    parser.add_argument(
        "--answer", type=float, help="seconds per headline answer (50 tokens a second)"
    )
    parser.add_argument("--subscribers", type=int, help="idle SSE subscribers to hold")
    parser.add_argument(
        "--levels",
        help="comma-separated concurrent answers (e.g. 50,100,150): the headline's with "
        "--headline, the ceiling's steps with --ceiling, else the old p99 ladder's",
    )
    parser.add_argument(
        "--chatsvc-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a CHATSVC_ setting for chatsvc A and B (e.g. CHATSVC_CHECKPOINT_MIN_MS=50)",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the workers under load")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"))
    parser.add_argument(
        "--out", type=Path, default=Path("bench-out"), help="where profiles are written"
    )
    parser.add_argument(
        "--soak", action="store_true", help="instead: a steady mix for --soak-minutes (soak.py)"
    )
    parser.add_argument("--soak-minutes", type=float, help="the soak's length (default 10)")
    parser.add_argument("--soak-streams", type=int, help="the soak's answers at once (default 20)")
    parser.add_argument(
        "--pg-ceiling",
        action="store_true",
        help="instead: the ceiling of one Postgres, no LLM or HTTP (pgceiling.py)",
    )
    parser.add_argument(
        "--pg-processes", type=int, help="--pg-ceiling's emulated instances (default 2)"
    )
    parser.add_argument(
        "--pg-piece-ms",
        type=float,
        help="--pg-ceiling: append every N ms at the same pace (default 20: one token)",
    )
    return parser.parse_args(argv)


def mode_of(args: argparse.Namespace) -> str:
    """ "full", "headline" or "ceiling"."""
    return "headline" if args.headline else "ceiling" if args.ceiling else "full"


def params_from(args: argparse.Namespace) -> context.Params:
    """The run's parameters: the full or smoke set, with the command line's changes."""
    params = context.SMOKE if args.smoke else context.Params()
    mode = mode_of(args)
    changes: dict[str, Any] = {"profile": args.profile}
    if args.streams:
        changes["streams"] = args.streams
    if args.window:
        key = {"full": "window_s", "headline": "headline_window_s", "ceiling": "ceiling_window_s"}
        changes[key[mode]] = args.window
    if args.answer:
        changes["headline_answer_s"] = args.answer
    if args.runs:
        changes["runs"] = args.runs
    if args.subscribers:
        changes["subscribers"] = args.subscribers
    if args.levels:
        levels = tuple(int(x) for x in args.levels.split(","))
        key = {"full": "levels", "headline": "headline_levels", "ceiling": "ceiling_levels"}
        changes[key[mode]] = levels
        if mode == "headline" and params.headline_bound_level not in levels:
            changes["headline_bound_level"] = levels[len(levels) // 2]
    changes["max_seconds"] = time_limit(replace(params, **changes), mode)
    return replace(params, **changes)


def time_limit(p: context.Params, mode: str) -> float:
    """A generous bound on the whole run: past it, the run stops and fails."""
    answer = p.headline_answer_s
    load_run = 2 * answer + 60  # ramp, drain, conversations, readings

    def headline_s() -> float:
        wal = (p.headline_wal_repeats + 1) * (answer + 10) + 60
        return p.runs * (wal + 2 * len(p.headline_levels) * (load_run + p.headline_window_s))

    if mode == "headline":
        return 300 + headline_s()
    if mode == "ceiling":
        return 300 + 2 * len(p.ceiling_levels) * (load_run + p.ceiling_window_s)
    return p.max_seconds + headline_s()


def chatsvc_settings(pairs: list[str]) -> dict[str, str]:
    """The --chatsvc-env NAME=VALUE pairs, checked the way chatsvc reads them."""
    extra = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.startswith("CHATSVC_"):
            raise SystemExit(f"--chatsvc-env wants CHATSVC_NAME=VALUE, not {pair!r}")
        extra[name] = value
    Settings.from_env(extra)  # raises ConfigError on a value chatsvc would refuse
    return extra


def raise_fd_limit() -> None:
    """Thousands of sockets: lift the soft limit to the hard one (the services inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def environment(llm_port: int, params: context.Params) -> dict[str, str]:
    """What chatsvc and the baseline run with (chatsvc also gets DATABASE_URL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSVC_")}
    env.pop("DATABASE_URL", None)
    env.update(
        {
            "CHATSVC_MODEL": "openai/fake",
            "CHATSVC_LLM_API_BASE": f"http://127.0.0.1:{llm_port}/v1",
            "CHATSVC_LLM_API_KEY": "sk-bench",
            "CHATSVC_CHECKPOINT_MS": str(params.checkpoint_ms),
            "CHATSVC_LEASE_S": f"{params.lease_s:g}",
            "CHATSVC_HEARTBEAT_S": f"{params.heartbeat_s:g}",
            # every answer is the one bench user's: lift the per-user limit of streaming answers
            "CHATSVC_MAX_ACTIVE_PER_USER": "1000000",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@dataclass
class Started:
    """Everything running, and how to restart a chatsvc instance killed on purpose."""

    db: Database
    tokens: list[str]  # the bench's users'
    llm: Service
    chatsvc: list[Service]
    baseline: list[Service]
    restart: Callable[[int], Service]
    batched: Service | None
    coalesce_ms: int  # A's and B's CHATSVC_CHECKPOINT_MIN_MS


def start_everything(
    stack: contextlib.ExitStack,
    tmp: Path,
    params: context.Params,
    logs: Path,
    *,
    with_batched: bool,
    chatsvc_env: dict[str, str],
    with_baseline: bool = True,
) -> Started:
    """The fake LLM and the baseline start first (they need no database) while Postgres starts
    and is migrated; then chatsvc A and B (and C if `with_batched`), with `chatsvc_env` on
    top of the bench's settings. Each is stopped when the stack unwinds. The soak asks for
    no baseline (`with_baseline=False`)."""
    python = sys.executable
    llm_port = free_port()
    env = environment(llm_port, params)
    coalesce_ms = Settings.from_env({**env, **chatsvc_env}).coalesce_ms

    def service(name: str, argv: list[str], ready: str, port: int, **extra: str) -> Service:
        return Service(name, argv, env={**env, **extra}, logs=logs, port=port, ready_path=ready)

    fleet: list[Service] = []
    stack.callback(stop_all, fleet)  # if Postgres does not start

    def launch(started: Service) -> Service:
        fleet.append(started)
        return started.start()

    llm_argv = [python, "-m", "chatsvc.fakellm", "--port", str(llm_port)]
    llm = launch(service("fakellm", llm_argv, "/", llm_port))
    baselines = []
    for slot in range(2 if with_baseline else 0):
        port = free_port()
        argv = [python, "-m", "benchmarks.baseline", "--port", str(port), "--workers", "1"]
        baselines.append(launch(service(f"baseline-{slot + 1}", argv, "/healthz", port)))
    server_url = os.environ.get("DATABASE_URL")
    db = scratch_database(server_url) if server_url else private_postgres(tmp / "pg")
    stack.callback(db.close)
    stack.callback(stop_all, fleet)  # before Postgres stops: the stack unwinds backwards
    chatsvc_cli({**env, "DATABASE_URL": db.url}, "db", "upgrade")
    tokens = bench_users({**env, "DATABASE_URL": db.url})

    def chatsvc(slot: int, port: int, **extra: str) -> Service:
        argv = [python, "-m", "chatsvc", "serve", "--port", str(port), "--workers", "1"]
        name = f"chatsvc-{'ABC'[slot]}"
        settings = {**chatsvc_env, **extra}
        return launch(service(name, argv, "/readyz", port, DATABASE_URL=db.url, **settings))

    instances = [chatsvc(0, free_port()), chatsvc(1, free_port())]
    # C holds each answer's checkpoints at least one checkpoint interval apart
    batched = (
        chatsvc(2, free_port(), CHATSVC_CHECKPOINT_MIN_MS=str(params.checkpoint_ms))
        if with_batched
        else None
    )
    for started in [llm, *baselines, *instances, *([batched] if batched else [])]:
        started.wait_ready()

    def restart(slot: int) -> Service:
        instances[slot] = chatsvc(slot, instances[slot].port)
        return instances[slot].wait_ready()

    return Started(db, tokens, llm, instances, baselines, restart, batched, coalesce_ms)


# The load runs' answers belong to this many users, in turn: chatsvc serialises the sends of
# one user (its per-user lock counts their streaming answers), and real traffic is many users.
BENCH_USERS = 20


def bench_users(env: dict[str, str]) -> list[str]:
    """Create the bench's users (at the same time: each is a CLI process); their tokens."""
    pool = gevent.pool.Pool(4)
    outputs = pool.map(
        lambda i: chatsvc_cli(env, "users", "create", f"bench-{i + 1}"), range(BENCH_USERS)
    )
    return [output.strip().splitlines()[-1] for output in outputs]


def measure(bench: context.Bench, mode: str) -> dict[str, Any]:
    """The mode's phases."""
    if mode == "headline":
        say("warming up")
        headline.warm_up(bench)
        results = {"headline": headline.headline(bench)}
        if bench.params.profile:
            streams = min(bench.params.headline_levels)
            say(f"profiling a chatsvc worker and a baseline worker at {streams} answers")
            shape = loadrun.headline_shape(bench.params)
            results["profile"] = profile_phase(bench, streams, shape)
        return results
    if mode == "ceiling":
        say("warming up")
        headline.warm_up(bench)
        return {"ceiling": ceiling.ceiling(bench)}
    return measure_all(bench)


def measure_all(bench: context.Bench) -> dict[str, Any]:
    """Every phase of the full run, in an order that keeps them from disturbing each other."""
    p = bench.params
    results: dict[str, Any] = {}
    say("WAL: one answer at a time, next to the naive rewrite")
    results["wal"] = phases.wal(bench)
    streams = min(p.levels)
    say(f"chatsvc-batched: {streams} streams, checkpoints {p.checkpoint_ms} ms apart")
    batched = loadrun.load_run(bench, "chatsvc-batched", streams, p.level_window_s)
    assert bench.batched is not None
    bench.batched.stop()  # so that it listens to no one else's notifications
    say("warming up")
    headline.warm_up(bench)
    for system in ("chatsvc", "baseline"):
        warm = loadrun.load_run(bench, system, min(10, p.streams), 1.0, answer_s=1.0)
        if warm["answers_failed"]:
            say(f"warm-up of {system}: {warm['answers_failed']} failed: {warm['errors']}")
    results["headline"] = headline.headline(bench)
    load: dict[str, Any] = {}
    for system, where in (
        ("baseline", ""),
        ("chatsvc", ", followed on the other instance"),
        ("chatsvc-same", ", followed on the same instance"),
    ):
        say(f"{system}: {p.streams} streams{where}")
        load[system.replace("-", "_")] = loadrun.load_run(bench, system, p.streams, p.window_s)
    results["load"] = {**load, "chatsvc_batched": batched}
    results["ladder"] = {}
    for system in ("chatsvc", "baseline"):
        say(f"{system}: the most streams within p99 < {p.p99_bound_ms:g} ms")
        results["ladder"][system] = loadrun.ladder(bench, system)
    if p.profile:
        level = report.common_level(results["ladder"])
        streams = level[0]["streams"] if level else min(p.levels)
        say(f"profiling a chatsvc worker and a baseline worker at {streams} streams")
        results["profile"] = profile_phase(bench, streams)
    say(f"idle subscribers: {p.subscribers}")
    results["subscribers"] = phases.subscribers(bench)
    say("takeover: SIGKILL the owner")
    results["takeover"] = phases.takeover(bench)
    return results


def profile_phase(
    bench: context.Bench, streams: int, shape: load.Shape | None = None
) -> dict[str, Any]:
    """A load run for each system with py-spy on one worker, at a load both sustain (under
    overload both are busy in litellm alone, which hides what chatsvc adds); of the old
    shape unless `shape` says otherwise (the headline's, with `--headline --profile`)."""
    p = bench.params
    window_s = p.window_s if shape is None else p.headline_window_s
    summaries = {}
    for system, servers in (("chatsvc", bench.chatsvc), ("baseline", bench.baseline)):
        worker = servers[0].workers()[0]
        run = loadrun.load_run(
            bench, system, streams, window_s, profile_pid=worker, profile_name=system, shape=shape
        )
        summaries[system] = {
            "streams": streams,
            **run["profile"],
            "cpu_us_per_chunk": run["cpu_us_per_chunk"],
            "core_percent": run["core_percent"],
        }
    return summaries


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when the table was produced (the soak: when it passed)."""
    args = parse_args(argv)
    params = params_from(args)
    mode = mode_of(args)
    chatsvc_env = chatsvc_settings(args.chatsvc_env)
    raise_fd_limit()
    main_greenlet = gevent.getcurrent()
    gevent.signal_handler(signal.SIGTERM, lambda: main_greenlet.throw(SystemExit(143)))
    if args.soak:
        return soak.main(args, start_everything)
    if args.pg_ceiling:
        return pgceiling.main(args, chatsvc_env)
    started = time.monotonic()
    busy_before = session.busy_before(say)

    def run() -> int:
        with session.workspace("chatsvc-bench-", args.out, params.max_seconds) as (
            stack,
            tmp,
            logs,
        ):
            say(f"starting Postgres, the fake LLM, chatsvc and the baseline ({tmp})")
            up = start_everything(
                stack, tmp, params, logs, with_batched=mode == "full", chatsvc_env=chatsvc_env
            )
            db = up.db
            bench = context.Bench(
                params,
                db,
                up.llm,
                up.chatsvc,
                up.baseline,
                up.tokens,
                args.out,
                up.restart,
                up.batched,
                up.coalesce_ms,
            )
            if not db.private:
                bench.notes.append(
                    "DATABASE_URL: WAL is the whole server's, and so is Postgres CPU (if visible)"
                )
            try:
                results: dict[str, Any] = {
                    "smoke": args.smoke,
                    "mode": mode,
                    "machine": report.machine(db.version, db.private, busy_before),
                    "params": asdict(params),
                    "chatsvc_env": chatsvc_env,
                    **measure(bench, mode),
                    "notes": bench.notes,
                }
            except BaseException:
                batched = [up.batched] if up.batched else []
                session.tell_logs(say, [up.llm, *bench.chatsvc, *batched, *up.baseline])
                raise
            results["elapsed_s"] = time.monotonic() - started
            results["rows"] = report.rows(results)
            print(report.render(results), flush=True)
            report.write_json(results, args.json)
            say(f"results written to {args.json}; stopping everything")
        return 0

    return session.guarded("benchmark failed", say, run)


if __name__ == "__main__":
    sys.exit(main())
