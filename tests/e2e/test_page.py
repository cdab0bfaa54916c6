"""The chat page as people use it, in a real Chromium: Markdown, the live list, models, tools.

Each test keeps screenshots in test-artifacts/ at a desktop's and a phone's width.
Every wait is on something the page shows, or on the server's own stream.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.e2e.browser import ARTIFACTS, Chromium, Page
from tests.e2e.conftest import Instance, serving
from tests.faketools import FakeToolServer
from tests.support import ApiClient, FakeLLMServer, make_user, query

pytestmark = pytest.mark.e2e

DESKTOP = (1280, 800)
PHONE = (390, 844)
MODELS = "openai/fake,openai/fake-large"
REPEAT = "\n\n@fake say=1 size=6 delay=0.03"

LONG_LINE = "print(" + " + ".join(f"'part {i}'" for i in range(40)) + ")"
MARKDOWN = f"""## Packing list

Some **bold** words, `inline code` and [the docs](https://example.com/docs).

- a towel
- a guide

| item | count |
|------|------:|
| towel | 1 |
| guide | 2 |

```python
{LONG_LINE}
```
"""
# The usual payloads: none may run, each must stay readable as text.
PAYLOADS = """<script>window.__pwned = "script"</script>
<img src=x onerror="window.__pwned='img'">
<svg onload="window.__pwned='svg'"><circle r="4"></circle></svg>
<iframe src="javascript:window.__pwned='iframe'"></iframe>
<a href="javascript:window.__pwned='raw'">raw anchor</a>
[plain](javascript:window.__pwned='plain') [mixed](JaVaScRiPt:window.__pwned='mixed')
[entity](&#106;avascript:window.__pwned='entity') [tab](java&#9;script:window.__pwned='tab')
[data](data:text/html;base64,PHNjcmlwdD53aW5kb3cuX19wd25lZD0xPC9zY3JpcHQ+) [vb](vbscript:msgbox)
![picture](javascript:window.__pwned='image') <javascript:window.__pwned='auto'>
"""
# For wait_for_function: the element's text has at least n code points (as offsets count).
TEXT_AT_LEAST = """([selector, n]) => {
    const e = document.querySelector(selector);
    return !!e && Array.from(e.textContent).length >= n;
}"""
# The elements that reach past the right edge (to say what widens the page).
WIDEST = """() => Array.from(document.querySelectorAll('body *'))
    .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
    .slice(0, 5).map(e => e.tagName + '.' + e.className + ' ' + e.getBoundingClientRect().right)"""
DRAWER_IN = "() => document.getElementById('sidebar').getBoundingClientRect().x >= 0"
FOCUSED_NAME = """() => document.activeElement.getAttribute('aria-label')
    || document.activeElement.textContent.trim()"""
UNSAFE_LINKS = ["plain", "mixed", "entity", "tab", "data", "vb", "picture"]


@pytest.fixture(scope="module")
def tools() -> Iterator[FakeToolServer]:
    server = FakeToolServer(slow_s=1.5)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(
    shared_db: str,
    fake_llm: FakeLLMServer,
    tools: FakeToolServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Instance]:
    """One instance with two models to choose from and two tools."""
    tools_file = tmp_path_factory.mktemp("tools") / "tools.toml"
    tools_file.write_text(
        f'[[tools]]\nname = "add"\nurl = "{tools.url("ok", "add")}"\n\n'
        f'[[tools]]\nname = "lookup"\nurl = "{tools.url("slow", "lookup")}"\n'
    )
    env = {"CHATSVC_MODELS": MODELS, "CHATSVC_TOOLS_FILE": str(tools_file)}
    with serving(Instance(shared_db, fake_llm, env=env)) as (instance,):
        yield instance


@pytest.fixture
def user(server: Instance, shared_db: str) -> ApiClient:
    return server.client(make_user(shared_db, f"page-{uuid.uuid4().hex[:8]}"))


def _sign_in(page: Page, base: str, token: str, path: str = "/") -> None:
    page.goto(base + path)
    page.locator("#token").fill(token)
    page.locator("role=button[name='Sign in']").click()
    # The sign-in reloads the page; it is usable once its scripts have run (chat.js marks it).
    page.locator("html[data-ready] [data-live-list]").expect("to_be_attached")


def _shoot(page: Page, name: str) -> Path:
    path = ARTIFACTS / f"page-{name}.png"
    page.screenshot(path=str(path))
    return path


def _no_errors(page: Page) -> None:
    errors = [line for line in page.console() if "error" in line.lower()]
    assert not errors, errors


def _fits(page: Page) -> None:
    wide = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    culprits = page.evaluate(WIDEST) if wide > 0 else []
    assert wide <= 0, f"the page scrolls sideways by {wide}px: {culprits}"


def _answer(page: Page, n: int = 1) -> str:
    """The selector of the n-th answer, once there is one."""
    page.locator(f"article.assistant >> nth={n - 1}").expect("to_be_attached")
    answer_id: str = page.locator(f"article.assistant >> nth={n - 1}").get_attribute("data-id")
    return f"#m-{answer_id}"


def _finished(page: Page, answer: str) -> None:
    page.locator(answer).expect("to_have_attribute", "aria-busy", "false", timeout=30_000)


def _row(db: str, answer: str) -> dict[str, Any]:
    (row,) = query(db, "SELECT * FROM messages WHERE id = %s", answer.removeprefix("#m-"))
    return row


def test_markdown_renders_while_streaming_and_after_and_no_payload_runs(
    chromium: Chromium, context: str, server: Instance, user: ApiClient, shared_db: str
) -> None:
    conversation = user.conversation(title="Markdown")
    page = chromium.new_page(context, viewport=DESKTOP)
    _sign_in(page, server.base, user.token or "", f"/c/{conversation['id']}")
    page.locator(".connection").expect("to_have_text", "live")
    page.locator("#content").fill(MARKDOWN + PAYLOADS + REPEAT)
    page.locator("role=button[name='Send']").click()
    answer = _answer(page)
    # While it streams, what has arrived is already Markdown.
    page.locator(f"{answer}[aria-busy=true] .markdown h2").expect("to_have_text", "Packing list")
    page.locator(f"{answer}[aria-busy=true] .markdown strong").expect("to_have_text", "bold")
    _shoot(page, "markdown-streaming")
    _finished(page, answer)
    markdown = f"{answer} .markdown"
    page.locator(f"{markdown} li").expect("to_have_count", 2)
    page.locator(f"{markdown} p code >> nth=0").expect("to_have_text", "inline code")
    link = page.locator(f"{markdown} a:text-is('the docs')")
    link.expect("to_have_attribute", "href", "https://example.com/docs")
    link.expect("to_have_attribute", "rel", "noopener noreferrer nofollow")
    page.locator(f"{markdown} th").expect("to_have_count", 2)
    page.locator(f"{markdown} td.align-right >> nth=1").expect("to_have_text", "2")
    code = page.locator(f"{markdown} .code-block pre")
    code.expect("to_have_text", LONG_LINE)
    assert code.evaluate("e => e.scrollWidth > e.clientWidth"), "a long line scrolls in its block"
    page.locator(f"{markdown} >> role=button[name='Copy code']").click()
    page.locator(f"{markdown} .code-block").expect("to_contain_text", "Copied")
    # Nothing ran, nothing active was made, and the payloads read as the text they are.
    for name in UNSAFE_LINKS:  # a link without a safe URL is text, or an anchor without href
        found = page.locator(f"{markdown} a:text-is('{name}')")
        if found.count():
            assert found.get_attribute("href") is None
            found.click()
        else:
            page.locator(f"{markdown}").expect("to_contain_text", f"[{name}](")
    assert page.evaluate("() => window.__pwned") is None
    for article in ("article.user", answer):
        active = f"{article} .markdown :is(script, img, svg, iframe):not(.code-head *)"
        assert page.locator(active).count() == 0
        hrefs = page.locator(f"{article} .markdown a[href]").evaluate_all(
            "links => links.map(a => a.getAttribute('href'))"
        )
        assert hrefs and all(h.startswith(("https://", "mailto:")) for h in hrefs), hrefs
        text = page.locator(f"{article} .markdown").text_content()
        assert '<script>window.__pwned = "script"</script>' in text
        assert "<img src=x onerror=\"window.__pwned='img'\">" in text
    assert page.locator(f"{answer} .text").text_content() == _row(shared_db, answer)["content"]
    _fits(page)
    _shoot(page, "markdown-desktop")
    phone = chromium.new_page(context, viewport=PHONE)
    phone.goto(f"{server.base}/c/{conversation['id']}")
    phone.locator(f"{answer} .markdown .code-block").expect("to_be_visible")
    _fits(phone)
    phone.locator(f"{answer} .code-block").scroll_into_view_if_needed()
    _shoot(phone, "markdown-phone")
    assert phone.evaluate("() => window.__pwned") is None
    _no_errors(page)
    _no_errors(phone)


def test_the_list_beside_the_conversation_is_live_and_renames_and_deletes(
    chromium: Chromium, context: str, server: Instance, user: ApiClient, shared_db: str
) -> None:
    index = chromium.new_page(context, viewport=DESKTOP)
    _sign_in(index, server.base, user.token or "")
    conversation = user.conversation()
    item = f"li[data-id='{conversation['id']}']"
    index.locator(f"{item} .conv-title").expect("to_have_text", "New conversation")
    other = server.client(make_user(shared_db, f"other{conversation['id'][:8]}"))
    hidden = other.conversation(title="not for you")
    user.send(conversation["id"], "Plan a weekend in Lisbon\n@fake chunks=150 delay=0.02")
    # Titled after its first message, marked while its answer streams, then not.
    index.locator(f"{item} .conv-title").expect(
        "to_have_text", "Plan a weekend in Lisbon @fake chunks=150 delay=0.02"
    )
    index.locator(f"{item}[data-streaming=true] .live-dot").expect("to_be_visible")
    _shoot(index, "list-streaming")
    index.locator(f"{item}[data-streaming=false]").expect("to_be_attached", timeout=30_000)
    tab = chromium.new_page(context, viewport=DESKTOP)
    tab.goto(f"{server.base}/c/{conversation['id']}")
    tab.locator(".connection").expect("to_have_text", "live")
    tab.locator(f"{item}").expect("to_have_attribute", "aria-current", "page")
    # Renamed in one tab: the other's list and heading follow.
    index.locator(item).hover()
    index.locator(f"{item} >> role=button[name='Rename']").click()
    index.locator(f"{item} >> role=textbox[name='Title']").fill("Lisbon <weekend>")
    index.locator(f"{item} >> role=textbox[name='Title']").press("Enter")
    tab.locator("h1").expect("to_have_text", "Lisbon <weekend>")
    tab.locator(f"{item} .conv-title").expect("to_have_text", "Lisbon <weekend>")
    assert user.get(f"/api/conversations/{conversation['id']}").json()["title"] == (
        "Lisbon <weekend>"
    )
    assert index.locator(f"li[data-id='{hidden['id']}']").count() == 0
    # Deleted in one tab: gone from both lists, and the open one says so.
    index.locator(item).hover()
    index.locator(f"{item} >> role=button[name='Delete']").click()
    index.locator(item).expect("to_have_count", 0)
    tab.locator(item).expect("to_have_count", 0)
    tab.locator(".connection").expect("to_have_text", "This conversation no longer exists.")
    tab.locator("role=button[name='Send']").expect("to_be_disabled")
    assert user.get(f"/api/conversations/{conversation['id']}").status_code == 404
    _no_errors(index)


def test_a_new_conversation_from_the_start_page_with_a_chosen_model(
    chromium: Chromium, context: str, server: Instance, user: ApiClient, shared_db: str
) -> None:
    page = chromium.new_page(context, viewport=DESKTOP)
    _sign_in(page, server.base, user.token or "")
    page.locator("#model option").expect("to_have_count", 2)
    page.locator("#model").expect("to_have_value", "openai/fake")
    _shoot(page, "start-desktop")
    page.locator("#model").select_option("openai/fake-large")
    page.locator("#first-message").fill("Which model are you?\n@fake chunks=40 delay=0.01")
    page.locator("#first-message").press("Enter")
    page.locator("article.user").expect("to_be_attached")
    answer = _answer(page)
    _finished(page, answer)
    page.locator(f"{answer} .model").expect("to_have_text", "openai/fake-large")
    assert _row(shared_db, answer)["model"] == "openai/fake-large"
    page.locator("h1").expect("to_have_text", "Which model are you? @fake chunks=40 delay=0.01")
    page.locator("li[aria-current=page] .conv-title").expect(
        "to_have_text", "Which model are you? @fake chunks=40 delay=0.01"
    )
    # The choice stays for the next message; the next answer says which model wrote it.
    page.locator("#model").expect("to_have_value", "openai/fake-large")
    page.locator("#model").select_option("openai/fake")
    page.locator("#content").fill("And now?\n@fake chunks=10 delay=0.01")
    page.locator("#content").press("Enter")
    second = _answer(page, 2)
    _finished(page, second)
    page.locator(f"{second} .model").expect("to_have_text", "openai/fake")
    page.locator("role=link[name='New conversation']").click()
    page.locator("#first-message").expect("to_be_focused")
    _no_errors(page)


def test_reasoning_is_collapsed_and_tool_cards_follow_the_call(
    chromium: Chromium, context: str, server: Instance, user: ApiClient
) -> None:
    conversation = user.conversation(title="Tools")
    page = chromium.new_page(context, viewport=DESKTOP)
    _sign_in(page, server.base, user.token or "", f"/c/{conversation['id']}")
    page.locator(".connection").expect("to_have_text", "live")
    calls = 'lookup:{"city":"Lisbon"};add:{"a":1,"b":2}'
    page.locator("#content").fill(f"Weather?\n@fake reasoning=6 calls={calls} chunks=20 size=4")
    page.locator("#content").press("Enter")
    answer = _answer(page)
    lookup = f"{answer} .tool[data-call-id=call_0_0]"
    # The slow tool is shown running, then done, with its input and output.
    page.locator(f"{lookup} .tool-state").expect("to_have_text", "running")
    page.locator(f"{lookup} .tool-name").expect("to_have_text", "lookup")
    _shoot(page, "tools-running")
    page.locator(f"{lookup} .tool-state").expect("to_have_text", "done", timeout=20_000)
    _finished(page, answer)
    reasoning = page.locator(f"{answer} details.reasoning >> nth=0")
    assert reasoning.get_attribute("open") is None, "reasoning starts collapsed"
    page.locator(f"{answer} details.reasoning .reasoning-text >> nth=0").expect("to_be_hidden")
    page.locator(f"{answer} details.reasoning >> nth=0 >> summary").click()
    page.locator(f"{answer} details.reasoning .reasoning-text >> nth=0").expect("to_be_visible")
    page.locator(f"{lookup} summary").click()
    assert json.loads(page.locator(f"{lookup} .tool-input").text_content()) == {"city": "Lisbon"}
    output = json.loads(page.locator(f"{lookup} .tool-output").text_content())
    assert output["tool"] == "lookup" and output["arguments"] == {"city": "Lisbon"}
    add = f"{answer} .tool[data-call-id=call_0_1]"
    page.locator(f"{add} .tool-state").expect("to_have_text", "done")
    # A reload renders the same parts from the database.
    page.reload()
    page.locator(f"{lookup} .tool-state").expect("to_have_text", "done")
    page.locator(f"{answer} details.reasoning").expect("to_have_count", 2)
    _shoot(page, "tools-desktop")
    phone = chromium.new_page(context, viewport=PHONE)
    phone.goto(f"{server.base}/c/{conversation['id']}")
    phone.locator(f"{lookup} summary").click()
    _fits(phone)
    _shoot(phone, "tools-phone")
    _no_errors(page)


def test_a_phone_a_keyboard_and_the_local_time(
    chromium: Chromium, context: str, server: Instance, user: ApiClient, shared_db: str
) -> None:
    conversation = user.conversation(title="On the go")
    user.wait_terminal(user.send(conversation["id"], MARKDOWN + REPEAT)["assistant_message"]["id"])
    page = chromium.new_page(context, viewport=PHONE, timezone="Asia/Kolkata")
    _sign_in(page, server.base, user.token or "", f"/c/{conversation['id']}")
    page.locator(".connection").expect("to_have_text", "live")
    _fits(page)
    page.locator("#sidebar").expect("to_be_hidden")
    # Times in the browser's zone (UTC+5:30 here), the full date on hover.
    (first,) = query(
        shared_db,
        "SELECT created_at FROM messages WHERE conversation_id = %s AND role = 'user'",
        conversation["id"],
    )
    local: datetime = first["created_at"].astimezone(ZoneInfo("Asia/Kolkata"))
    time = page.locator("article.user time")
    time.expect("to_have_text", local.strftime("%I:%M %p"))
    assert "GMT+5:30" in time.get_attribute("title")
    _shoot(page, "phone-conversation")
    # The list is a drawer: opened by its button, closed with Escape.
    page.locator("role=button[name='Conversations']").click()
    page.locator("#sidebar").expect("to_be_visible")
    page.wait_for_function(
        "() => document.getElementById('sidebar').getBoundingClientRect().x >= 0"
    )
    page.locator(f"li[data-id='{conversation['id']}'] .conv-title").expect("to_be_visible")
    _fits(page)
    _shoot(page, "phone-drawer")
    page.locator(":focus").press("Escape")
    page.locator("#sidebar").expect("to_be_hidden")
    # Enter sends, Shift+Enter breaks the line; Tab reaches the buttons, with a visible focus.
    composer = page.locator("#content")
    composer.press_sequentially("line one")
    composer.press("Shift+Enter")
    composer.press_sequentially("line two @fake chunks=5")
    composer.press("Enter")
    page.locator("article.user >> nth=1").expect("to_be_attached")
    sent = page.locator("article.user >> nth=1 >> .text").text_content()
    assert sent == "line one\nline two @fake chunks=5"
    _finished(page, _answer(page, 2))
    composer.focus()
    names = []
    for _ in range(8):
        page.locator(":focus").press("Shift+Tab")
        names.append(page.evaluate(FOCUSED_NAME))
    assert "Regenerate" in names and "Copy" in names, names
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "keyboard focus is visible"
    _no_errors(page)


def _versions(page: Page, article: str) -> str:
    label: str = page.locator(f"{article} .version-label").text_content()
    return label


def test_stop_continue_regenerate_edit_and_versions_in_two_tabs(
    chromium: Chromium, context: str, server: Instance, user: ApiClient, shared_db: str
) -> None:
    conversation = user.conversation(title="Versions")
    page = chromium.new_page(context, viewport=DESKTOP)
    _sign_in(page, server.base, user.token or "", f"/c/{conversation['id']}")
    other = chromium.new_page(context, viewport=DESKTOP)
    other.goto(f"{server.base}/c/{conversation['id']}")
    for tab in (page, other):
        tab.locator(".connection").expect("to_have_text", "live")
    question = "Tell me a long story\n@fake chunks=300 size=3 delay=0.02"
    page.locator("#content").fill(question)
    page.locator("#content").press("Enter")
    answer = _answer(page)
    page.wait_for_function(TEXT_AT_LEAST, arg=[f"{answer} .text", 60])
    # Stop pauses the answer; Continue resumes it where it stopped.
    page.locator("role=button[name='Stop']").click()
    page.locator(f"{answer} .status").expect("to_have_text", "cancelled")
    stopped = _row(shared_db, answer)["content"]
    assert 60 <= len(stopped) < 900
    page.locator(".hint").expect("to_contain_text", "Continue resumes it")
    _shoot(page, "stopped")
    page.locator(f"{answer} >> role=button[name='Continue']").click()
    page.locator(answer).expect("to_have_attribute", "aria-busy", "true")
    assert page.locator(f"{answer} .text").text_content().startswith(stopped)
    _finished(page, answer)
    row = _row(shared_db, answer)
    assert row["status"] == "completed" and row["epoch"] == 2
    assert page.locator(f"{answer} .text").text_content() == row["content"]
    assert row["content"].startswith(stopped) and len(row["content"]) == 900
    other.locator(f"{answer}").expect("to_have_attribute", "aria-busy", "false")
    assert other.locator(f"{answer} .text").text_content() == row["content"]
    # Regenerate: a second version replaces the first here and in the other tab.
    page.locator(f"{answer} >> role=button[name='Regenerate']").click()
    page.locator(answer).expect("to_have_count", 0)
    second = _answer(page)
    assert _versions(page, second) == "2 / 2"
    other.locator(f"{second} .version-label").expect("to_have_text", "2 / 2")
    other.locator(answer).expect("to_have_count", 0)
    _finished(page, second)
    _finished(other, second)
    page.locator(f"{second} >> role=button[name='Previous version']").click()
    page.locator(f"{answer} .version-label").expect("to_have_text", "1 / 2")
    page.locator(second).expect("to_have_count", 0)
    other.locator(f"{answer} .version-label").expect("to_have_text", "1 / 2")
    page.locator(f"{answer} >> role=button[name='Next version']").click()
    page.locator(f"{second} .version-label").expect("to_have_text", "2 / 2")
    # Edit: the question gets a second version, with its own answer.
    first_question = page.locator("article.user").get_attribute("id")
    page.locator("article.user >> role=button[name='Edit']").click()
    editor = page.locator("article.user form.editor textarea")
    editor.expect("to_have_value", question)
    editor.fill("Tell me a short one\n@fake chunks=20 size=3 delay=0.02")
    _shoot(page, "editing")
    editor.press("Enter")
    page.locator(f"#{first_question}").expect("to_have_count", 0)
    page.locator("article.user .version-label").expect("to_have_text", "2 / 2")
    page.locator("article.user .text").expect(
        "to_have_text", "Tell me a short one\n@fake chunks=20 size=3 delay=0.02"
    )
    edited_answer = _answer(page)
    _finished(page, edited_answer)
    other.locator("article.user .version-label").expect("to_have_text", "2 / 2")
    other.locator(edited_answer).expect("to_have_attribute", "aria-busy", "false")
    _shoot(page, "versions-desktop")
    phone = chromium.new_page(context, viewport=PHONE)
    phone.goto(f"{server.base}/c/{conversation['id']}")
    phone.locator("article.user .version-label").expect("to_have_text", "2 / 2")
    _fits(phone)
    _shoot(phone, "versions-phone")
    _no_errors(page)
    _no_errors(other)
