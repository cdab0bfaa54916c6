"""The browser half of tests/e2e/browser.py: Playwright's sync API in a plain Python process.

Run as `python -m tests.e2e.playwright_driver CHROMIUM_PATH`. It reads one JSON
command per line on stdin and answers one JSON line on stdout. It never imports
gevent: this process is not monkey-patched, so Playwright runs exactly as its
authors intend. It launches the Chromium it is given (Debian's); Playwright's own
browser download is never used.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Page, Response, expect, sync_playwright

# Playwright adds --headless and a fresh --user-data-dir itself; the rest keep a
# root-run Chromium from needing a sandbox or a GPU and from calling out to a
# network that is closed here.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

DEFAULT_TIMEOUT_MS = 15_000


class Driver:
    """Named contexts (a cookie jar each) and named pages, and calls on them."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: dict[str, BrowserContext] = {}
        self.pages: dict[str, Page] = {}
        self.console: dict[str, list[str]] = {}

    def open_page(
        self,
        context: str,
        page: str,
        viewport: dict[str, int] | None,
        timezone: str | None = None,
    ) -> None:
        """A new page (tab) in a context, created on first use (in `timezone`, if given)."""
        if context not in self.contexts:
            options = {"timezone_id": timezone} if timezone else {}
            self.contexts[context] = self.browser.new_context(**options)
            self.contexts[context].set_default_timeout(DEFAULT_TIMEOUT_MS)
        tab = self.contexts[context].new_page()
        if viewport is not None:
            tab.set_viewport_size({"width": viewport["width"], "height": viewport["height"]})
        lines = self.console.setdefault(page, [])
        tab.on("console", lambda m: lines.append(f"console.{m.type}: {m.text}"))
        tab.on("pageerror", lambda e: lines.append(f"page error: {e}"))
        self.pages[page] = tab

    def call(
        self,
        page: str,
        selector: str | None,
        assertion: bool,
        method: str,
        args: list[Any],
        kwargs: dict[str, Any],
    ) -> Any:
        """page.method(...), page.locator(selector).method(...), or expect(locator).method(...)."""
        target: Any = self.pages[page]
        if selector is not None:
            target = target.locator(selector)
        if assertion:
            target = expect(target)
        result = getattr(target, method)(*args, **kwargs)
        if isinstance(result, Response):
            return {"status": result.status, "url": result.url}
        return result

    def handle(self, command: dict[str, Any]) -> Any:
        """Run one command."""
        op = command["op"]
        if op == "open_page":
            return self.open_page(
                command["context"],
                command["page"],
                command.get("viewport"),
                command.get("timezone"),
            )
        if op == "call":
            return self.call(
                command["page"],
                command.get("selector"),
                command.get("expect", False),
                command["method"],
                command.get("args", []),
                command.get("kwargs", {}),
            )
        if op == "console":
            return self.console.get(command["page"], [])
        if op == "close_context":
            self.contexts.pop(command["context"]).close()
            return None
        raise ValueError(f"unknown op {op!r}")


def main() -> None:
    """Serve commands until stdin closes or `quit` arrives."""
    # Replies go to the original stdout; anything else that writes there (Chromium,
    # Playwright's node driver) is sent to stderr so it cannot corrupt the protocol.
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=sys.argv[1], args=FLAGS)
        expect.set_options(timeout=DEFAULT_TIMEOUT_MS)
        driver = Driver(browser)
        replies.write(json.dumps({"ready": browser.version}) + "\n")
        replies.flush()
        for line in sys.stdin:
            command = json.loads(line)
            if command["op"] == "quit":
                break
            reply: dict[str, Any] = {"id": command["id"]}
            try:
                reply["result"] = driver.handle(command)
            except Exception as exc:
                reply["error"] = f"{type(exc).__name__}: {exc}"
                page = command.get("page")
                if page is not None:
                    reply["console"] = driver.console.get(page, [])[-30:]
            replies.write(json.dumps(reply, default=repr) + "\n")
            replies.flush()
        browser.close()


if __name__ == "__main__":
    main()
