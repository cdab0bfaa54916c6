"""Operating a real instance: /metrics sums every worker, and JSON logs from every process.

One `chatsvc serve` with two gevent workers and CHATSVC_LOG_FORMAT=json answers
questions sent on fresh connections, so that both workers generate some (the
access log's `process` says which did); then every scrape, whichever worker
takes it, must report the same totals, and every line the instance wrote must
be a JSON object.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Instance, serving
from tests.faketools import FakeToolServer
from tests.support import ApiClient, FakeLLMServer, make_user, query, wait_until

SEND_ROUTE = "/api/conversations/<uuid:conversation_id>/messages"
ANSWERS = 8


def _lines(instance: Instance) -> list[dict[str, Any]]:
    """Every line the instance wrote (stdout and stderr), each parsed as one JSON object."""
    records = []
    for number, line in enumerate(instance.log.read_text().splitlines(), 1):
        record = json.loads(line)  # fails the test, naming the line, if it is not JSON
        assert isinstance(record, dict), (number, line)
        records.append(record)
    return records


def _served_by(instance: Instance, method: str, path_start: str) -> list[int]:
    """The worker processes whose access lines show these requests."""
    return [
        r["process"]
        for r in _lines(instance)
        if r["logger"] == "gunicorn.access"
        and r["method"] == method
        and r["path"].startswith(path_start)
    ]


def _scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One scrape, on a connection of its own (so any worker may take it)."""
    response = requests.get(base + "/metrics", timeout=10, headers={"Connection": "close"})
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def _raw(base: str, data: bytes) -> tuple[str, dict[str, str]]:
    """Send bytes on a connection of their own; the status line and headers of the answer."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(data)
        head = b""
        while b"\r\n\r\n" not in head:
            received = conn.recv(4096)
            assert received, head
            head += received
    status, *lines = head.split(b"\r\n\r\n")[0].decode().split("\r\n")
    return status, {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines)}


def test_metrics_sum_every_worker_and_every_log_line_is_json(
    db: str, fake_llm: FakeLLMServer, fake_tools: FakeToolServer, tmp_path: Path
) -> None:
    tools = tmp_path / "tools.toml"
    tools.write_text(f'[[tools]]\nname = "add"\nurl = "{fake_tools.url("ok", "add")}"\n')
    # Up to 40 answers may stream at once while the sends find both workers.
    env = {
        "CHATSVC_LOG_FORMAT": "json",
        "CHATSVC_TOOLS_FILE": str(tools),
        "CHATSVC_MAX_ACTIVE_PER_USER": "50",
    }
    token = make_user(db, "operator")
    instance = Instance(db, fake_llm, workers=2, env=env)
    with serving(instance):
        sent: list[str] = []
        # Fresh connections until both workers generated answers (bounded).
        while len(sent) < ANSWERS or len(set(_served_by(instance, "POST", "/api/conv"))) < 2:
            assert len(sent) < 40, "every send went to one worker"
            client = ApiClient(instance.base, token)
            question = '@fake chunks=4 calls=add:{"a":1}' if not sent else "@fake chunks=6"
            conversation = client.conversation()["id"]
            response = client.post(
                f"/api/conversations/{conversation}/messages",
                {"content": question},
                headers={"X-Request-ID": f"e2e-send-{len(sent)}"},
            )
            assert response.status_code == 202, response.text
            assert response.headers["X-Request-ID"] == f"e2e-send-{len(sent)}"
            sent.append(response.json()["assistant_message"]["id"])
            if len(sent) == 1:  # followed live, for the delivery lag
                assert client.wait_terminal(sent[0])["status"] == "completed"
        wait_until(
            "every answer ended",
            lambda: not query(db, "SELECT 1 FROM messages WHERE status = 'streaming'"),
        )
        workers = {r["process"] for r in _lines(instance) if "Booting worker" in r["message"]}
        assert len(workers) == 2

        scrapes = []
        while len(scrapes) < 6 or len(set(_served_by(instance, "GET", "/metrics"))) < 2:
            assert len(scrapes) < 40, "every scrape went to one worker"
            scrapes.append(_scrape(instance.base))
        assert set(_served_by(instance, "GET", "/metrics")) == workers

        def value(scrape: dict[Any, float], name: str, **labels: str) -> float:
            return scrape.get((name, tuple(sorted(labels.items()))), 0.0)

        totals = [
            (
                value(s, "chatsvc_answers_total", status="completed"),
                value(s, "chatsvc_answer_duration_seconds_count", status="completed"),
                value(s, "chatsvc_answers_started_total", how="sent"),
                value(s, "chatsvc_first_text_seconds_count"),
                value(s, "chatsvc_takeovers_total", action="resume"),
                value(s, "chatsvc_tool_calls_total", tool="add", outcome="succeeded"),
                value(s, "chatsvc_tool_call_seconds_count", tool="add"),
            )
            for s in scrapes
        ]
        assert len(set(totals)) == 1, totals  # whichever worker answered
        completed, durations, started, first_text, resumed, calls, timed = totals[0]
        answers = len(sent)
        assert completed == durations == started == answers, totals[0]
        # On a loaded machine a worker may stall past its lease: an answer taken
        # over before its first text is not timed from its send.
        assert answers - resumed <= first_text <= answers, totals[0]
        assert calls == timed == 1, totals[0]
        # Everything else that only grows is the same in every scrape taken since
        # (no request but these scrapes happened meanwhile).
        last = scrapes[-1]
        assert value(last, "chatsvc_checkpoint_commit_seconds_count") >= answers
        assert value(last, "chatsvc_delivery_lag_seconds_count", transport="sse") > 0
        assert value(last, "chatsvc_tokens_total", kind="completion") > 0
        assert (
            value(
                last, "chatsvc_http_request_duration_seconds_count", route=SEND_ROUTE, status="202"
            )
            == answers
        )
        assert value(last, "chatsvc_streams_owned") == 0

        # A request gunicorn itself refuses gets an id too, and so do its lines.
        status, headers = _raw(instance.base, b"NOT A REQUEST\r\n\r\n")
        assert status.startswith("HTTP/1.1 400")
        refused = headers["x-request-id"]
        # So does the WebSocket upgrade, whose 101 simple-websocket writes under gunicorn.
        status, headers = _raw(
            instance.base,
            b"GET /api/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"X-Request-ID: e2e-ws\r\n\r\n",
        )
        assert status.startswith("HTTP/1.1 101") and headers["x-request-id"] == "e2e-ws"

    records = _lines(instance)  # after the stop: the master's last lines too
    master = {r["process"] for r in records if r["message"].startswith("Starting gunicorn")}
    assert len(master) == 1 and master.isdisjoint(workers)
    assert any(r["message"] == "Shutting down: Master" for r in records)
    assert any(
        r.get("request_id") == refused and "Invalid request" in r["message"] for r in records
    )
    for number, answer in enumerate(sent):
        about_request = [r for r in records if r.get("request_id") == f"e2e-send-{number}"]
        assert any(r["logger"] == "gunicorn.access" for r in about_request), number
        about_answer = [r for r in records if r.get("message_id") == answer]
        assert any("completed" in r["message"] for r in about_answer), answer
