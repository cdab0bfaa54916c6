"""Which models a client may choose: GET /api/models."""

from __future__ import annotations

from tests.support import TEST_SETTINGS, ApiClient, AppServer, make_user


def test_without_chatsvc_models_the_default_model_alone(alice: ApiClient) -> None:
    response = alice.get("/api/models")
    assert response.status_code == 200
    assert response.json() == {"items": [{"id": "chatsvc/offline", "default": True}]}


def test_chatsvc_models_are_listed_in_order_with_the_default_marked(db_url: str) -> None:
    settings = TEST_SETTINGS.with_(
        model="openai/b", models=("anthropic/a", "openai/b", "chatsvc/offline")
    )
    server = AppServer(db_url, settings)
    try:
        client = ApiClient(server.base, make_user(db_url, "alice"))
        assert client.get("/api/models").json() == {
            "items": [
                {"id": "anthropic/a", "default": False},
                {"id": "openai/b", "default": True},
                {"id": "chatsvc/offline", "default": False},
            ]
        }
        assert ApiClient(server.base, None).get("/api/models").status_code == 401
    finally:
        server.stop()
