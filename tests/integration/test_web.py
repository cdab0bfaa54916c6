"""The browser pages over real HTTP: sign-in, the list, the server-rendered conversation.

What the page does once its script runs is tested in a real browser (tests/e2e/test_browser.py);
these check what the server sends: the true state from the database, escaped.
"""

from __future__ import annotations

import html
import re
import uuid
from typing import Any

import gevent
import psycopg
import pytest
import requests

from chatsvc.fakellm import parse_directives, script_text
from chatsvc.web.auth import COOKIE
from tests.support import ApiClient, AppServer, make_user

LONG = "@fake chunks=400 size=3 delay=0.01 alphabet=mixed"


@pytest.fixture
def user(llm_app: AppServer) -> ApiClient:
    return ApiClient(llm_app.base, make_user(llm_app.db_url, "dora"))


def _browser(user: ApiClient) -> requests.Session:
    """A cookie jar signed in the way the page does it."""
    browser = requests.Session()
    response = browser.post(f"{user.base}/api/session", json={"token": user.token}, timeout=10)
    assert response.status_code == 201, response.text
    return browser


def _page(session: requests.Session, url: str, status: int = 200) -> str:
    response = session.get(url, timeout=10)
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["Cache-Control"] == "no-store"
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    return response.text


def _articles(page: str) -> list[dict[str, Any]]:
    """Each rendered message: attributes, status label, and text as a browser shows it."""
    found = []
    for match in re.finditer(r'<article class="message (\w+)" (.*?)</article>', page, re.S):
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', match.group(2).split(">", 1)[0]))
        raw = re.search(r'<div class="text">(.*?)</div>', match.group(2), re.S)
        status = re.search(r'<span class="status">(.*?)</span>', match.group(2), re.S)
        assert raw is not None and status is not None
        assert "<" not in raw.group(1), "markup inside message text"
        found.append(
            {
                "role": match.group(1),
                **attrs,
                "raw": raw.group(1),
                "text": html.unescape(raw.group(1)),
                "status_label": status.group(1),
                "stop": 'data-action="stop"' in match.group(2),
                "error": re.search(r'<p class="error"[^>]*>(.*?)</p>', match.group(2), re.S),
            }
        )
    return found


def _rendered(page: str) -> list[dict[str, Any]]:
    """The messages of the conversation (not the template the script clones)."""
    return _articles(page.split('<template id="message-template">', maxsplit=1)[0])


def _wait_for_text(user: ApiClient, message_id: str, length: int) -> None:
    """Read the answer's stream until `length` characters are committed."""
    seen = 0
    with gevent.Timeout(20):
        for event in user.sse(f"/api/messages/{message_id}/stream"):
            if event.event == "delta":
                seen += len(event.json()["text"])
            if seen >= length or event.event == "done":
                return


@pytest.mark.parametrize("path", ["/", f"/c/{uuid.uuid4()}", "/c/not-a-uuid"])
def test_without_a_session_pages_ask_for_a_token(llm_app: AppServer, path: str) -> None:
    for cookies in ({}, {COOKIE: "css_ended"}):
        session = requests.Session()
        session.cookies.update(cookies)
        page = _page(session, llm_app.base + path)
        assert '<input id="token" name="token" type="password"' in page
        assert "Sign in" in page


def test_a_bearer_token_opens_the_pages_too(user: ApiClient, llm_app: AppServer) -> None:
    conversation = user.conversation(title="by token")
    page = _page(user.session, f"{llm_app.base}/c/{conversation['id']}")  # sends Bearer
    assert "<h1>by token</h1>" in page and 'id="token"' not in page
    wrong = requests.Session()
    wrong.headers["Authorization"] = "Bearer csk_wrong"
    assert 'id="token"' in _page(wrong, f"{llm_app.base}/c/{conversation['id']}")


def test_unknown_and_invisible_conversations_are_404_pages(
    user: ApiClient, llm_app: AppServer
) -> None:
    other = ApiClient(llm_app.base, make_user(llm_app.db_url, "eve"))
    hidden = other.conversation(title="eve's")
    browser = _browser(user)
    for path in (f"/c/{uuid.uuid4()}", "/c/not-a-uuid", f"/c/{hidden['id']}"):
        page = _page(browser, llm_app.base + path, 404)
        assert "No such conversation." in page and "eve&#39;s" not in page


def test_index_lists_conversations_with_the_streaming_ones(
    user: ApiClient, llm_app: AppServer
) -> None:
    quiet = user.conversation(title="<script>alert(1)</script>")
    busy = user.conversation(title="busy")
    answer = user.send(busy["id"], LONG)["assistant_message"]
    page = _page(_browser(user), llm_app.base + "/")
    assert f'href="/c/{quiet["id"]}">&lt;script&gt;alert(1)&lt;/script&gt;</a>' in page
    busy_item = page.split(f'href="/c/{busy["id"]}"')[1].split("</li>")[0]
    assert '<span class="badge streaming">streaming</span>' in busy_item
    quiet_item = page.split(f'href="/c/{quiet["id"]}"')[1].split("</li>")[0]
    assert "streaming" not in quiet_item
    assert 'data-form="new-conversation"' in page
    user.post(f"/api/messages/{answer['id']}/cancel")


def test_conversation_page_renders_an_answer_mid_stream(
    user: ApiClient, llm_app: AppServer
) -> None:
    conversation = user.conversation(title="mid-stream")
    sent = user.send(conversation["id"], "<img src=x onerror=alert(1)> " + LONG)
    answer_id = sent["assistant_message"]["id"]
    _wait_for_text(user, answer_id, 60)
    page = _page(_browser(user), f"{llm_app.base}/c/{conversation['id']}")
    question, answer = _rendered(page)
    assert question["text"] == "<img src=x onerror=alert(1)> " + LONG
    assert question["aria-busy"] == "false" and question["status_label"] == ""
    assert answer["id"] == f"m-{answer_id}" and answer["data-status"] == "streaming"
    assert answer["aria-busy"] == "true" and answer["status_label"] == "streaming"
    assert answer["stop"]
    expected = script_text(parse_directives(LONG))
    assert 60 <= int(answer["data-length"]) == len(answer["text"]) < len(expected)
    assert expected.startswith(answer["text"])  # the committed text so far, exactly
    assert f'data-cursor="{answer_id}:{answer["data-length"]}"' in page
    final = user.wait_terminal(answer_id)
    assert final["content"] == expected


def test_terminal_answers_show_their_status(user: ApiClient, llm_app: AppServer) -> None:
    conversation = user.conversation()
    failed = user.send(conversation["id"], "@fake chunks=50 fail_after=10")["assistant_message"]
    user.wait_terminal(failed["id"])
    cancelled = user.send(conversation["id"], "@fake chunks=500 delay=0.01")["assistant_message"]
    _wait_for_text(user, cancelled["id"], 8)
    user.post(f"/api/messages/{cancelled['id']}/cancel")
    user.wait_terminal(cancelled["id"])
    completed = user.send(conversation["id"], "@fake chunks=5")["assistant_message"]
    user.wait_terminal(completed["id"])
    with psycopg.connect(llm_app.db_url) as conn:  # as a takeover under policy interrupt leaves it
        conn.execute(
            "WITH m AS (INSERT INTO messages (conversation_id, parent_id, role, status, content, "
            "content_length, completed_at, error) VALUES (%s, %s, 'assistant', 'interrupted', "
            "'half <i>an', 10, now(), 'the answer was interrupted') RETURNING id) "
            "UPDATE conversations SET current_leaf_id = (SELECT id FROM m) WHERE id = %s",
            (conversation["id"], completed["id"], conversation["id"]),
        )
    page = _page(_browser(user), f"{llm_app.base}/c/{conversation['id']}")
    answers = [a for a in _rendered(page) if a["role"] == "assistant"]
    labels = [(a["data-status"], a["status_label"], a["aria-busy"], a["stop"]) for a in answers]
    assert labels == [
        ("failed", "failed", "false", False),
        ("cancelled", "cancelled", "false", False),
        ("completed", "", "false", False),
        ("interrupted", "interrupted", "false", False),
    ]
    assert answers[0]["error"] is not None and answers[0]["error"].group(1)
    assert answers[3]["text"] == "half <i>an" and answers[3]["raw"] == "half &lt;i&gt;an"
    assert "answer was interrupted" in answers[3]["error"].group(1)


def test_static_files_are_served(llm_app: AppServer) -> None:
    page = _page(requests.Session(), llm_app.base + "/")
    for name in ("chat.js", "chat.css"):
        url = re.search(rf'(/static/{name}\?v=\w+)"', page)
        assert url is not None, name
        assert requests.get(llm_app.base + url.group(1), timeout=10).status_code == 200
