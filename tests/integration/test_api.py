"""The non-streaming HTTP API over real HTTP: auth, projects, conversations, errors."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
import requests

from tests.support import ApiClient, AppServer, make_user


def _error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body


def _count(db_url: str, table: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert row is not None
        return int(row[0])


# --- health ---------------------------------------------------------------------


def test_health_and_readiness(app_server: AppServer) -> None:
    anonymous = ApiClient(app_server.base, None)
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    ready = anonymous.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


def test_metrics_are_prometheus_text(app_server: AppServer) -> None:
    response = ApiClient(app_server.base, None).get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "# TYPE chatsvc_streams_owned gauge" in response.text


# --- auth -----------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer nope", "Basic abc", "Bearer "])
def test_api_requires_a_valid_bearer_token(app_server: AppServer, header: str | None) -> None:
    client = ApiClient(app_server.base, None)
    headers = {"Authorization": header} if header is not None else {}
    response = client.get("/api/conversations", headers=headers)
    _error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_session_cookie_for_browsers(app_server: AppServer, alice: ApiClient) -> None:
    browser = ApiClient(app_server.base, None)
    _error(browser.post("/api/session", {"token": "csk_wrong"}), 401, "unauthorized")
    response = browser.post("/api/session", {"token": alice.token})
    assert response.status_code == 201
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert alice.token not in cookie
    assert browser.get("/api/me").json()["name"] == "alice"
    assert browser.get("/api/conversations").status_code == 200
    assert browser.delete("/api/session").status_code == 204
    _error(browser.get("/api/conversations"), 401, "unauthorized")


def test_tokens_are_stored_hashed(app_server: AppServer, alice: ApiClient) -> None:
    with psycopg.connect(app_server.db_url) as conn:
        rows = conn.execute("SELECT token_hash FROM api_tokens").fetchall()
    assert rows and all(alice.token.encode() not in bytes(r[0]) for r in rows)


# --- projects -------------------------------------------------------------------


def test_projects_and_members(app_server: AppServer, alice: ApiClient, bob: ApiClient) -> None:
    project = alice.post("/api/projects", {"name": "Team"}).json()
    assert project["members"] == ["alice"]
    assert [p["id"] for p in alice.get("/api/projects").json()["items"]] == [project["id"]]
    assert bob.get("/api/projects").json()["items"] == []
    shared = alice.conversation(project_id=project["id"], title="shared")
    private = alice.conversation(title="private")

    _error(bob.get(f"/api/conversations/{shared['id']}"), 404, "not_found")
    _error(bob.post(f"/api/projects/{project['id']}/members", {"user": "bob"}), 404, "not_found")
    _error(
        alice.post(f"/api/projects/{project['id']}/members", {"user": "nobody"}), 404, "not_found"
    )

    added = alice.post(f"/api/projects/{project['id']}/members", {"user": "bob"})
    assert added.status_code == 201 and added.json()["members"] == ["alice", "bob"]
    again = alice.post(f"/api/projects/{project['id']}/members", {"user": "bob"})
    assert again.status_code == 200

    assert bob.get(f"/api/conversations/{shared['id']}").status_code == 200
    _error(bob.get(f"/api/conversations/{private['id']}"), 404, "not_found")
    listed = [c["id"] for c in bob.get("/api/conversations").json()["items"]]
    assert listed == [shared["id"]]
    filtered = alice.get("/api/conversations", params={"project_id": project["id"]}).json()
    assert [c["id"] for c in filtered["items"]] == [shared["id"]]

    assert bob.delete(f"/api/projects/{project['id']}/members/bob").status_code == 204
    _error(bob.get(f"/api/conversations/{shared['id']}"), 404, "not_found")


def test_conversation_in_a_foreign_project_is_not_found(alice: ApiClient, bob: ApiClient) -> None:
    project = alice.post("/api/projects", {"name": "Team"}).json()
    _error(bob.post("/api/conversations", {"project_id": project["id"]}), 404, "not_found")


# --- conversations --------------------------------------------------------------


def test_conversation_lifecycle(app_server: AppServer, alice: ApiClient, bob: ApiClient) -> None:
    created = alice.conversation(title="Hello")
    assert created["title"] == "Hello" and created["is_streaming"] is False
    assert created["created_at"].endswith("Z")
    uuid.UUID(created["id"])
    fetched = alice.get(f"/api/conversations/{created['id']}").json()
    assert fetched["id"] == created["id"] and fetched["messages"] == []
    _error(bob.get(f"/api/conversations/{created['id']}"), 404, "not_found")
    _error(bob.delete(f"/api/conversations/{created['id']}"), 404, "not_found")
    assert alice.delete(f"/api/conversations/{created['id']}").status_code == 204
    _error(alice.get(f"/api/conversations/{created['id']}"), 404, "not_found")
    _error(alice.delete(f"/api/conversations/{created['id']}"), 404, "not_found")


def test_listing_is_newest_first_and_pages(alice: ApiClient) -> None:
    ids = [alice.conversation(title=f"c{i}")["id"] for i in range(5)]
    page = alice.get("/api/conversations", params={"limit": 2}).json()
    assert [c["id"] for c in page["items"]] == ids[::-1][:2]
    assert all(c["is_streaming"] is False for c in page["items"])
    rest = alice.get("/api/conversations", params={"limit": 10, "before": page["next_before"]})
    assert [c["id"] for c in rest.json()["items"]] == ids[::-1][2:]
    assert rest.json()["next_before"] is None


# --- errors ---------------------------------------------------------------------


def test_bad_requests_get_clear_errors_and_change_nothing(
    app_server: AppServer, alice: ApiClient
) -> None:
    conversation = alice.conversation()
    path = f"/api/conversations/{conversation['id']}/messages"
    before = _count(app_server.db_url, "messages")

    _error(
        alice.post(path, data="{not json", headers={"Content-Type": "application/json"}),
        400,
        "invalid_json",
    )
    _error(
        alice.post(path, data=b"\xff\xfe", headers={"Content-Type": "application/json"}),
        400,
        "invalid_json",
    )
    _error(alice.post(path, data="content=hi"), 415, "unsupported_media_type")
    _error(
        alice.post(path, data='{"content": "hi"}', headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    _error(alice.post(path, []), 422, "validation_error")
    _error(alice.post(path, {}), 422, "validation_error")
    _error(alice.post(path, {"content": ""}), 422, "validation_error")
    _error(alice.post(path, {"content": 5}), 422, "validation_error")
    _error(alice.post(path, {"content": "hi", "extra": 1}), 422, "validation_error")
    _error(alice.post(path, {"content": "hi", "model": ""}), 422, "validation_error")
    _error(alice.post(path, {"content": "a\u0000b"}), 422, "validation_error")
    _error(
        alice.post(
            path, data='{"content": "\\ud800"}', headers={"Content-Type": "application/json"}
        ),
        422,
        "validation_error",
    )
    _error(alice.post(path, {"content": "x" * 32_001}), 413, "too_large")
    _error(
        alice.post(path, data="x" * 300_000, headers={"Content-Type": "application/json"}),
        413,
        "too_large",
    )
    assert _count(app_server.db_url, "messages") == before


def test_unknown_ids_bad_uuids_and_methods(alice: ApiClient) -> None:
    _error(alice.get(f"/api/conversations/{uuid.uuid4()}"), 404, "not_found")
    _error(alice.get("/api/conversations/not-a-uuid"), 404, "not_found")
    _error(alice.get(f"/api/messages/{uuid.uuid4()}"), 404, "not_found")
    _error(alice.get("/api/nothing-here"), 404, "not_found")
    _error(
        alice.post(f"/api/conversations/{uuid.uuid4()}/messages", {"content": "hi"}),
        404,
        "not_found",
    )
    wrong = alice.request("PUT", "/api/conversations")
    _error(wrong, 405, "method_not_allowed")
    assert "POST" in wrong.headers["Allow"]
    _error(alice.get("/api/conversations", params={"limit": "abc"}), 400, "invalid_request")
    _error(alice.get("/api/conversations", params={"limit": "0"}), 400, "invalid_request")
    _error(alice.get("/api/conversations", params={"before": "nope"}), 400, "invalid_request")
    # An empty value is refused, never taken as absent.
    for name in ("limit", "before", "project_id"):
        response = alice.get(f"/api/conversations?{name}=")
        _error(response, 400, "invalid_request")
        assert name in response.json()["error"]["message"]
    _error(alice.post("/api/conversations", {"project_id": "nope"}), 422, "validation_error")
    _error(alice.post("/api/conversations", {"title": "t" * 201}), 422, "validation_error")


def test_user_names_are_unique(app_server: AppServer, alice: ApiClient) -> None:
    with pytest.raises(psycopg.errors.UniqueViolation):
        make_user(app_server.db_url, "alice")
