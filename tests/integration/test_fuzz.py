"""The OpenAPI description, fuzzed with schemathesis against the real app and Postgres.

Every operation of `GET /openapi.json` except the streaming ones (SSE and the
WebSocket, which never end by themselves) gets up to MAX_EXAMPLES requests,
valid and invalid, authenticated with a real token; half of the path
parameters are ids of real resources of the caller, so that requests reach
past the 404. Every response must be documented for its operation (status,
content type, headers, body schema), and none may be a server error.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from chatsvc.web import openapi
from chatsvc.web.app import create_app
from tests.conftest import clone_database, database_url, drop_database
from tests.support import ApiClient, AppServer, make_user

# Enough to find what the suite should catch in well under a minute; a deeper
# search: CHATSVC_FUZZ_EXAMPLES=500 scripts/test tests/integration/test_fuzz.py
MAX_EXAMPLES = int(os.environ.get("CHATSVC_FUZZ_EXAMPLES", "15"))
STREAMING = r"/stream$|/events$|^/api/ws$"

# A body over the size limit is 413 too_large, a documented rejection too.
REJECTED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
# The tree's operations are 422 for a message of the wrong kind or state, whatever
# the body, and every operation that takes a `model` is 422 unknown_model for one the
# operator did not list: documented answers to valid requests.
TREE = r"/(continue|regenerate|edit)$|/branch$|/messages$|^/api/chat$"
ACCEPTED_BY_TREE = ["2xx", "401", "404", "409", "422", "429"]
CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {"negative_data_rejection": {"expected-statuses": REJECTED}},
        "operations": [
            {
                "include-path-regex": TREE,
                "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED_BY_TREE}},
            }
        ],
    }
)

assert create_app  # the routes are declared as the app's modules are imported
schema = schemathesis.openapi.from_dict(openapi.document(), config=CONFIG).exclude(
    path_regex=STREAMING
)


TOKEN: dict[str, str] = {}


@schema.auth(refresh_interval=None)
class RealToken:
    """Schemathesis' own auth hook, so that it knows the token is given, not generated."""

    def get(self, case: Any, context: Any) -> str:
        return TOKEN.get("value", "")  # asked once at collection, before any fixture

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@dataclass
class Target:
    """The running app, a token, and the caller's real resources."""

    server: AppServer
    token: str
    message_id: str


@pytest.fixture(scope="module")
def target(pg_server: str, template_db: str) -> Iterator[Target]:
    name = clone_database(pg_server, template_db)
    url = database_url(pg_server, name)
    server = AppServer(url)
    try:
        token = make_user(url, "fuzz")
        make_user(url, "bob")
        client = ApiClient(server.base, token)
        message_id = client.ask("an answer that is already complete")
        client.wait_terminal(message_id)
        yield Target(server, token, message_id)
    finally:
        server.stop()
        drop_database(pg_server, name)


@pytest.fixture
def real_ids(target: Target) -> dict[str, str]:
    """Fresh resources for one operation's examples (a DELETE may have removed the last)."""
    client = ApiClient(target.server.base, target.token)
    project = client.post("/api/projects", {"name": "fuzzed"}).json()
    assert client.post(f"/api/projects/{project['id']}/members", {"user": "bob"}).ok
    conversation = client.conversation(project_id=project["id"])
    TOKEN["value"] = target.token
    return {
        "project_id": project["id"],
        "conversation_id": conversation["id"],
        "message_id": target.message_id,
        "name": "bob",
    }


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_response_matches_the_description(
    case: Any, target: Target, real_ids: dict[str, str]
) -> None:
    for key, value in (case.path_parameters or {}).items():
        # Deterministic in the generated value, so Hypothesis can replay a failure.
        if key in real_ids and zlib.crc32(str(value).encode()) % 2 == 0:
            case.path_parameters[key] = real_ids[key]
    # Reading `meta` revalidates the edited parts, so a request the edits made valid
    # is no longer expected to be rejected.
    assert case.meta is not None
    case.call_and_validate(base_url=target.server.base)
