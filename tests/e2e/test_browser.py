"""The conversation page in a real headless Chromium, against real `chatsvc serve` processes.

The browser runs in a child process (see tests/e2e/browser.py for why). Every wait is
on something the page shows (Playwright's web-first assertions and wait_for_function)
or on the server's own stream, never a sleep.
"""

from __future__ import annotations

import signal
import uuid
from typing import Any

import gevent
import psycopg
import pytest

from chatsvc.fakellm import parse_directives, script_text
from tests.e2e.browser import ARTIFACTS, Chromium, Page
from tests.e2e.conftest import Instance
from tests.support import ApiClient, FakeLLMServer, make_user

pytestmark = pytest.mark.e2e

LONG = "@fake chunks=400 size=3 delay=0.01 alphabet=mixed"
# Long enough (about 12 s) to be still streaming once a browser has signed in on a busy machine.
SLOW = "@fake chunks=400 size=3 delay=0.03 alphabet=mixed"
ENDLESS = "@fake chunks=5000 size=3 delay=0.01"
PHONE = (390, 844)

# For wait_for_function: the element's text has at least n code points (as offsets count).
TEXT_AT_LEAST = """([selector, n]) => {
    const e = document.querySelector(selector);
    return !!e && Array.from(e.textContent).length >= n;
}"""


def _expected(content: str) -> str:
    return script_text(parse_directives(content))


def _row(db: str, message_id: str) -> tuple[str, str, int]:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT status, content, epoch FROM messages WHERE id = %s", (message_id,)
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def _sign_in(page: Page, base: str, token: str, path: str = "/") -> None:
    page.goto(base + path)
    page.locator("#token").fill(token)
    page.locator("role=button[name='Sign in']").click()
    # The sign-in reloads the page; it is usable once its scripts have run (chat.js marks it).
    page.locator("html[data-ready] [data-action=sign-out]").expect("to_be_visible")


def _answer(page: Page) -> tuple[str, str]:
    """The id of the (first) answer on the page, once there is one, and its selector."""
    page.locator("article.assistant").expect("to_have_count", 1)
    answer_id: str = page.locator("article.assistant").get_attribute("data-id")
    return answer_id, f"#m-{answer_id}"


def _send(page: Page, content: str) -> None:
    page.locator("#content").fill(content)
    page.locator("#content").press("Enter")


def _text(page: Page, selector: str) -> str:
    text: str = page.locator(f"{selector} .text").text_content()
    return text


def _wait_for_committed(client: ApiClient, message_id: str, length: int) -> None:
    """Follow the answer's own stream until `length` characters are committed."""
    seen = 0
    with gevent.Timeout(20):
        for event in client.sse(f"/api/messages/{message_id}/stream"):
            seen += len(event.json().get("text", "")) if event.event == "delta" else 0
            if seen >= length:
                return
    raise AssertionError("the answer ended early")


def _no_markup_in_messages(page: Page) -> None:
    """The source text stays text, and its Markdown rendering holds no active element."""
    count = page.evaluate("() => document.querySelectorAll('.message .text *').length")
    assert count == 0, "model or user text became HTML"
    active = "script, img, svg, iframe, object, embed, style, b, i"
    script = f"() => document.querySelectorAll('.message .markdown :is({active})').length"
    found = page.evaluate(script)
    assert found == 0, "model or user text became HTML"


def _no_errors(page: Page) -> None:
    errors = [line for line in page.console() if "error" in line]
    assert not errors, errors


def test_sign_in_with_a_token_then_start_a_conversation(
    chromium: Chromium, context: str, pair: tuple[Instance, Instance], token: str
) -> None:
    a, _ = pair
    page = chromium.new_page(context)
    page.goto(f"{a.base}/")
    page.locator("#token").fill("csk_not-a-token")
    page.locator("role=button[name='Sign in']").click()
    page.locator("role=alert").expect("to_have_text", "This token is not valid. (unauthorized)")
    page.locator("#token").fill(token)
    page.locator("role=button[name='Sign in']").click()
    page.locator("html[data-ready] h1").expect("to_have_text", "Conversations")
    page.locator("#title").fill("<b>not bold</b>")
    page.locator("role=button[name='Start']").click()
    page.locator("h1").expect("to_have_text", "<b>not bold</b>")
    assert "/c/" in page.evaluate("() => location.pathname")
    assert page.locator("h1 b").count() == 0
    page.goto(f"{a.base}/c/{uuid.uuid4()}")
    page.locator("h1").expect("to_have_text", "No such conversation.")


def test_direct_url_mid_stream_shows_the_partial_text_then_the_whole_answer(
    chromium: Chromium, context: str, pair: tuple[Instance, Instance], token: str, shared_db: str
) -> None:
    a, _ = pair
    client = a.client(token)
    conversation = client.conversation(title="Mid-stream")
    question = "<img src=x onerror=alert(1)> " + SLOW
    answer_id = client.send(conversation["id"], question)["assistant_message"]["id"]
    _wait_for_committed(client, answer_id, 60)
    page = chromium.new_page(context)
    _sign_in(page, a.base, token, f"/c/{conversation['id']}")
    answer = f"#m-{answer_id}"
    # As rendered by the server: the text so far, marked as still being written.
    rendered = int(page.locator(answer).get_attribute("data-length"))
    assert 60 <= rendered < len(_expected(SLOW))
    page.locator(answer).expect("to_have_attribute", "aria-busy", "true")
    page.locator(f"{answer} .status").expect("to_have_text", "streaming")
    page.locator("role=button[name='Stop']").expect("to_be_visible")
    page.wait_for_function(TEXT_AT_LEAST, arg=[f"{answer} .text", rendered + 30])
    assert page.locator(answer).get_attribute("aria-busy") == "true", "not mid-stream"
    assert _expected(SLOW).startswith(_text(page, answer))
    page.screenshot(path=str(ARTIFACTS / "conversation-mid-stream.png"))
    page.locator(answer).expect("to_have_attribute", "aria-busy", "false", timeout=30_000)
    status, content, _ = _row(shared_db, answer_id)
    assert status == "completed" and _text(page, answer) == content == _expected(SLOW)
    page.locator(f"{answer} .status").expect("to_have_text", "")
    page.locator("role=button[name='Stop']").expect("to_be_hidden")
    assert page.locator(".message.user .text").text_content() == question
    _no_markup_in_messages(page)
    _no_errors(page)


@pytest.mark.parametrize("stop", ["SIGKILL", "SIGTERM"])
def test_stopped_and_restarted_server_the_open_page_completes_the_answer(
    chromium: Chromium, context: str, db: str, fake_llm: FakeLLMServer, stop: str
) -> None:
    """A crash (SIGKILL), or a deploy (SIGTERM: the server ends its streams and hands over)."""
    server = Instance(db, fake_llm).start().wait_ready()
    try:
        token = make_user(db, "rita")
        conversation = server.client(token).conversation(title="Restart")
        page = chromium.new_page(context)
        _sign_in(page, server.base, token, f"/c/{conversation['id']}")
        page.locator(".connection").expect("to_have_text", "live")
        _send(page, LONG)
        answer_id, answer = _answer(page)
        page.wait_for_function(TEXT_AT_LEAST, arg=[f"{answer} .text", 60])
        if stop == "SIGKILL":
            server.kill()
        else:
            server.signal(signal.SIGTERM)
            assert server.wait() == 0
        assert _row(db, answer_id)[0] == "streaming"
        page.locator(".connection").expect("to_have_text", "reconnecting…")
        server = Instance(db, fake_llm, port=server.port).start().wait_ready()
        page.locator(answer).expect("to_have_attribute", "aria-busy", "false", timeout=60_000)
        status, content, epoch = _row(db, answer_id)
        assert status == "completed" and epoch == 2  # taken over and resumed
        assert _text(page, answer) == content == _expected(LONG)  # nothing lost or repeated
        page.locator(".connection").expect("to_have_text", "live")
    finally:
        server.stop()


def test_stop_cancels_the_answer_and_the_page_shows_errors(
    chromium: Chromium, context: str, pair: tuple[Instance, Instance], token: str, shared_db: str
) -> None:
    a, _ = pair
    conversation = a.client(token).conversation(title="Stop")
    page = chromium.new_page(context)
    _sign_in(page, a.base, token, f"/c/{conversation['id']}")
    _send(page, ENDLESS)
    answer_id, answer = _answer(page)
    page.wait_for_function(TEXT_AT_LEAST, arg=[f"{answer} .text", 30])
    # Send waits, saying why, while an answer streams; the draft stays for later.
    _send(page, "a second question while the first is answered")
    page.locator("role=button[name='Send']").expect("to_be_disabled")
    page.locator("#composer-note").expect("to_contain_text", "An answer is being written")
    assert page.locator("#content").input_value() != "", "the draft is kept"
    page.locator("article").expect("to_have_count", 2)
    stop = page.locator("role=button[name='Stop']")
    box = stop.bounding_box()
    page.wait_for_function(TEXT_AT_LEAST, arg=[f"{answer} .text", 300])
    assert stop.bounding_box() == box, "Stop stays in one place while the answer grows"
    stop.click()
    page.locator(f"{answer} .status").expect("to_have_text", "cancelled")
    page.locator(answer).expect("to_have_attribute", "aria-busy", "false")
    status, content, _ = _row(shared_db, answer_id)
    assert status == "cancelled" and _text(page, answer) == content
    assert 30 <= len(content) < len(_expected(ENDLESS))
    page.locator("role=button[name='Stop']").expect("to_be_hidden")
    page.locator("role=button[name='Send']").expect("to_be_enabled")
    # Deleted elsewhere: the stream ends, the reconnect is refused (404), and the page says why.
    assert a.client(token).delete(f"/api/conversations/{conversation['id']}").status_code == 204
    page.locator(".connection").expect("to_have_text", "This conversation no longer exists.")


def test_two_tabs_on_two_servers_see_the_same_text(
    chromium: Chromium, context: str, pair: tuple[Instance, Instance], token: str, shared_db: str
) -> None:
    a, b = pair
    conversation = a.client(token).conversation(title="Two tabs")
    first = chromium.new_page(context)
    _sign_in(first, a.base, token, f"/c/{conversation['id']}")
    second = chromium.new_page(context, viewport=PHONE)  # the same cookie, a phone's width
    second.goto(f"{b.base}/c/{conversation['id']}")
    for page in (first, second):
        page.locator(".connection").expect("to_have_text", "live")
    _send(first, LONG)
    answer_id, answer = _answer(first)
    second.locator(answer).expect("to_have_attribute", "aria-busy", "true")
    second.wait_for_function(TEXT_AT_LEAST, arg=[f"{answer} .text", 60])
    second.screenshot(path=str(ARTIFACTS / "conversation-phone.png"))
    texts: list[Any] = []
    for page in (first, second):
        page.locator(answer).expect("to_have_attribute", "aria-busy", "false", timeout=30_000)
        texts.append(_text(page, answer))
        assert page.locator(".message.user .text").text_content() == LONG
        _no_markup_in_messages(page)
        _no_errors(page)
    _, content, _ = _row(shared_db, answer_id)
    assert texts[0] == texts[1] == content == _expected(LONG)
    overflow = second.evaluate("() => document.documentElement.scrollWidth > window.innerWidth")
    assert not overflow, "the page is wider than a phone"
