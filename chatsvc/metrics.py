"""The Prometheus metrics of a chatsvc process, and their exposition for the whole instance.

Every worker of an instance writes its metrics to files in one directory
(prometheus-client's multiprocess mode, `PROMETHEUS_MULTIPROC_DIR`, which
`chatsvc serve` sets up before it forks the workers), and `/metrics` answers
with the sum over all of them, whichever worker takes the request. Without that
directory (the app served inside the tests), a process reports itself.

Observations are per checkpoint, per event written to a client, per tool call or
per request, never per token: an observation costs a few microseconds.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

# Buckets in seconds. Commits and deliveries take milliseconds on a healthy
# database; the interesting tail is tens to hundreds of them.
FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
FIRST_TEXT = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
ANSWER = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TOOL = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HTTP = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# --- answers (engine/answers.py, engine/checkpoint.py, engine/leases.py) ---------------

ANSWERS = Counter("chatsvc_answers", "Answers ended, by terminal status.", ["status"])
ANSWERS_STARTED = Counter(
    "chatsvc_answers_started",
    "Answers whose generation started: `sent` (a send, regenerate or edit), or `resumed` "
    "(continuing an answer's text: after a takeover, or a client's continue).",
    ["how"],
)
TOKENS = Counter(
    "chatsvc_tokens", "Tokens of committed model calls (`prompt`, `completion`).", ["kind"]
)
TOKENS_ESTIMATED = Counter(
    "chatsvc_model_calls_estimated", "Model calls whose usage was estimated, not reported."
)
MODEL_CALLS = Counter("chatsvc_model_calls", "Model calls metered (one per step of an answer).")
STREAMS_OWNED = Gauge(
    "chatsvc_streams_owned", "Answers being generated (streaming).", multiprocess_mode="livesum"
)
FIRST_TEXT_SECONDS = Histogram(
    "chatsvc_first_text_seconds",
    "From a send to the commit of the answer's first text.",
    buckets=FIRST_TEXT,
)
ANSWER_SECONDS = Histogram(
    "chatsvc_answer_duration_seconds",
    "From the start of an answer's generation in a process (send or takeover) to its end.",
    ["status"],
    buckets=ANSWER,
)

# --- checkpoints (engine/checkpoint.py) ------------------------------------------------

CHECKPOINT_SECONDS = Histogram(
    "chatsvc_checkpoint_commit_seconds",
    "Duration of one checkpoint transaction (all the streams it commits).",
    buckets=FAST,
)
CHECKPOINT_TRANSACTIONS = Counter(
    "chatsvc_checkpoint_transactions", "Checkpoint transactions committed."
)
CHECKPOINTS = Counter("chatsvc_checkpoints", "Stream checkpoints with new text or reasoning.")
CHECKPOINT_CHARS = Counter(
    "chatsvc_checkpoint_chars", "Characters of text and reasoning committed."
)
CHECKPOINT_ERRORS = Counter("chatsvc_checkpoint_errors", "Failed checkpoint attempts.")
STREAMS_FENCED = Counter("chatsvc_streams_fenced", "Streams lost to another owner.")
TAKEOVERS = Counter(
    "chatsvc_takeovers",
    "Orphaned answers taken over, by what was done (`resume`, `interrupt`).",
    ["action"],
)

POOL_CONNECTIONS = Gauge(
    "chatsvc_pool_connections",
    "Open pooled connections (refreshed about once a second).",
    multiprocess_mode="livesum",
)

# --- tools (engine/tool_runner.py) -----------------------------------------------------

TOOL_CALLS = Counter(
    "chatsvc_tool_calls",
    "Tool calls sent, by tool and outcome (`succeeded`, `failed`, `timeout`).",
    ["tool", "outcome"],
)
TOOL_SECONDS = Histogram(
    "chatsvc_tool_call_seconds", "Duration of one tool call, by tool.", ["tool"], buckets=TOOL
)

# --- delivery (engine/hub.py, web/sse.py, web/ws.py) -----------------------------------

SUBSCRIBERS = Gauge(
    "chatsvc_subscribers", "Open SSE and WebSocket followers.", multiprocess_mode="livesum"
)
DELIVERY_SECONDS = Histogram(
    "chatsvc_delivery_lag_seconds",
    "From the moment a worker learns of a commit (its own commit returned, or the "
    "notification arrived) to the event written to a subscriber's socket.",
    ["transport"],
    buckets=FAST,
)
# Observed for every event written to a client: its children are looked up once.
DELIVERY = {transport: DELIVERY_SECONDS.labels(transport) for transport in ("sse", "websocket")}
SUBSCRIBER_OVERFLOWS = Counter(
    "chatsvc_subscriber_overflows", "Followers that fell behind and re-read from the database."
)

# --- load (engine/pressure.py, engine/commands.py) --------------------------------------

LOOP_LAG_SECONDS = Histogram(
    "chatsvc_loop_lag_seconds",
    "How much later than asked a worker's event loop woke a sleeping greenlet (sampled "
    "every 100 ms).",
    buckets=FAST,
)
WORKERS_BUSY = Gauge(
    "chatsvc_workers_busy",
    "Workers refusing new answers because their loop lags (CHATSVC_MAX_LOOP_LAG_MS).",
    multiprocess_mode="livesum",
)
BUSY_REFUSALS = Counter(
    "chatsvc_busy_refusals",
    "Sends, edits, regenerations and continues refused with 503 because the worker was busy.",
)

# --- HTTP (web/app.py) -----------------------------------------------------------------

HTTP_SECONDS = Histogram(
    "chatsvc_http_request_duration_seconds",
    "Time to answer a request, by route (its URL rule) and status; for a stream, the time "
    "to open it.",
    ["route", "status"],
    buckets=HTTP,
)


def exposition(multiprocess_dir: Path | None) -> tuple[bytes, str]:
    """The metrics in Prometheus text format and its content type: every worker's, summed,
    when they share a multiprocess directory, else this process's."""
    if multiprocess_dir is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_PLAIN_0_0_4
    registry = CollectorRegistry()
    path = str(multiprocess_dir)
    _multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4
