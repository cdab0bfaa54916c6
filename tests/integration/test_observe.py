"""X-Request-ID on every response, and /metrics counting what the app did."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ApiClient, AppServer, WsClient, make_user

SEND_ROUTE = "/api/conversations/<uuid:conversation_id>/messages"


def metric(client: ApiClient, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when absent)."""
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


@pytest.fixture
def client(llm_app: AppServer, db_url: str) -> ApiClient:
    return ApiClient(llm_app.base, make_user(db_url, "observer"))


def test_every_response_carries_the_clients_request_id(client: ApiClient) -> None:
    conversation = client.conversation()["id"]
    sent = {"X-Request-ID": "trace-7f3a"}
    message_id = client.send(conversation, "@fake chunks=3")["assistant_message"]["id"]
    responses = {
        "ok": client.get("/healthz", headers=sent),
        "created": client.post("/api/conversations", {}, headers=sent),
        "unauthorized": ApiClient(client.base, None).get("/api/conversations", headers=sent),
        "not found": client.get("/api/nothing-here", headers=sent),
        "method": client.delete("/healthz", headers=sent),
        "invalid": client.post(f"/api/conversations/{conversation}/messages", {}, headers=sent),
        "bad json": client.post(
            "/api/conversations", data=b"{", headers={**sent, "Content-Type": "application/json"}
        ),
        "metrics": client.get("/metrics", headers=sent),
        "page": client.get(f"/c/{conversation}", headers=sent),
    }
    sse = client.get(f"/api/messages/{message_id}/stream", headers=sent, stream=True)
    responses["sse"] = sse
    events = sse.iter_lines()
    assert any(line == b"event: done" for line in events)
    sse.close()
    length = client.get(f"/api/messages/{message_id}").json()["content_length"]
    responses["sse ended"] = client.get(
        f"/api/messages/{message_id}/stream?offset={length}", headers=sent
    )
    statuses = {name: r.status_code for name, r in responses.items()}
    assert statuses == {
        "ok": 200,
        "created": 201,
        "unauthorized": 401,
        "not found": 404,
        "method": 405,
        "invalid": 422,
        "bad json": 400,
        "metrics": 200,
        "page": 200,
        "sse": 200,
        "sse ended": 204,
    }
    assert {name: r.headers.get("X-Request-ID") for name, r in responses.items()} == {
        name: "trace-7f3a" for name in responses
    }


def test_a_request_without_an_acceptable_id_gets_a_new_one(client: ApiClient) -> None:
    ids = [
        client.get("/healthz").headers["X-Request-ID"],
        client.get("/healthz").headers["X-Request-ID"],
        client.get("/healthz", headers={"X-Request-ID": "no spaces allowed"}).headers[
            "X-Request-ID"
        ],
        client.get("/healthz", headers={"X-Request-ID": "x" * 129}).headers["X-Request-ID"],
    ]
    assert len(set(ids)) == 4
    assert all(len(one) == 32 and int(one, 16) >= 0 for one in ids)


def test_the_websocket_upgrade_carries_the_request_id(llm_app: AppServer) -> None:
    url = urlsplit(llm_app.base)
    with socket.create_connection((url.hostname, url.port), timeout=10) as conn:
        conn.sendall(
            b"GET /api/ws HTTP/1.1\r\n"
            b"Host: " + url.netloc.encode() + b"\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"X-Request-ID: ws-upgrade-1\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(4096)
            assert data, head
            head += data
    lines = head.split(b"\r\n\r\n")[0].decode().split("\r\n")
    assert lines[0].startswith("HTTP/1.1 101")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    assert headers["x-request-id"] == "ws-upgrade-1"
    # and the socket works as before
    ws = WsClient(llm_app.base)
    ws.send({"type": "nonsense"})
    assert ws.receive()["type"] == "error"
    ws.close()


def test_metrics_count_answers_deliveries_and_requests(client: ApiClient) -> None:
    before = {
        "completed": metric(client, "chatsvc_answers_total", status="completed"),
        "first": metric(client, "chatsvc_first_text_seconds_count"),
        "duration": metric(client, "chatsvc_answer_duration_seconds_count", status="completed"),
        "sse": metric(client, "chatsvc_delivery_lag_seconds_count", transport="sse"),
        "sends": metric(
            client, "chatsvc_http_request_duration_seconds_count", route=SEND_ROUTE, status="202"
        ),
        "commits": metric(client, "chatsvc_checkpoint_commit_seconds_count"),
        "completion": metric(client, "chatsvc_tokens_total", kind="completion"),
        "owned": metric(client, "chatsvc_streams_owned"),
    }
    for _ in range(2):
        message_id = client.ask("@fake chunks=5 delay=0.02")
        client.wait_terminal(message_id)
    after = {
        "completed": metric(client, "chatsvc_answers_total", status="completed"),
        "first": metric(client, "chatsvc_first_text_seconds_count"),
        "duration": metric(client, "chatsvc_answer_duration_seconds_count", status="completed"),
        "sse": metric(client, "chatsvc_delivery_lag_seconds_count", transport="sse"),
        "sends": metric(
            client, "chatsvc_http_request_duration_seconds_count", route=SEND_ROUTE, status="202"
        ),
        "commits": metric(client, "chatsvc_checkpoint_commit_seconds_count"),
        "completion": metric(client, "chatsvc_tokens_total", kind="completion"),
        "owned": metric(client, "chatsvc_streams_owned"),
    }
    grew = {name: after[name] - before[name] for name in before}
    assert grew["completed"] == grew["first"] == grew["duration"] == grew["sends"] == 2, grew
    assert grew["commits"] >= 2 and grew["completion"] > 0, grew
    # Each answer followed live from its start: most of its events came from commits.
    assert grew["sse"] >= 2, grew
    # (the gauge is this test process's: other tests' stopped apps may have left theirs)
    assert grew["owned"] == 0, grew
