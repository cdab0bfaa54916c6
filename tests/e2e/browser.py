"""A real headless Chromium for the e2e tests, driven by Playwright in a child process.

Why a child process: this test process is gevent-patched (tests/gevent_patch.py) and
serves the fake LLM from greenlets. Playwright's sync API drives its own asyncio loop
through greenlets and talks to its node driver over asyncio subprocess pipes; under
gevent's patched select, socket, subprocess and threading that is territory neither
project supports, and a sync call that blocked this process would also starve the
gevent hub, so the fake LLM the server streams from would stop mid-answer. Instead,
Playwright runs unpatched in `tests/e2e/playwright_driver.py`, and the test sends it
one JSON command per line over pipes, which gevent makes cooperative: while a test
waits for the browser, everything else in this process keeps running.

Calls read like Playwright's own: `page.goto(url)`, `page.locator(sel).click()`,
`page.locator(sel).expect("to_have_text", "...")` for `expect(locator).to_have_text`.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import gevent

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("CHATSVC_TEST_CHROMIUM", "/usr/bin/chromium")
DEFAULT_TIMEOUT_MS = 15_000  # Playwright's own timeout for a call, as in the driver


class BrowserError(AssertionError):
    """The browser could not do what a test asked (the message says why)."""


class Chromium:
    """The driver process and its browser; pages are opened with `new_page`."""

    def __init__(self) -> None:
        if shutil.which(CHROMIUM) is None:
            raise BrowserError(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.playwright_driver", CHROMIUM],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        self.ids = itertools.count()
        self.names = itertools.count()
        self.version = self._read(60)["ready"]

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            with gevent.Timeout(timeout):
                line = self.proc.stdout.readline()
        except gevent.Timeout:
            # A late answer would be taken for the next one: this driver is done for.
            self.proc.kill()
            raise BrowserError(f"the browser driver did not answer within {timeout} s") from None
        if not line:
            raise BrowserError("the browser driver exited (its stderr is in the test output)")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def command(self, op: str, timeout: float = 30, **fields: Any) -> Any:
        """Send one command and return its result, raising BrowserError for its error."""
        assert self.proc.stdin is not None
        command_id = next(self.ids)
        self.proc.stdin.write((json.dumps({"id": command_id, "op": op, **fields}) + "\n").encode())
        self.proc.stdin.flush()
        reply = self._read(timeout)
        assert reply["id"] == command_id, reply
        if "error" in reply:
            console = "\n".join(reply.get("console", []))
            raise BrowserError(f"{reply['error']}\n--- browser console:\n{console}")
        return reply.get("result")

    def new_page(
        self,
        context: str = "default",
        viewport: tuple[int, int] | None = None,
        timezone: str | None = None,
    ) -> Page:
        """A new tab; tabs in one context share cookies, so one sign-in serves them all.

        `timezone` (an IANA name) applies to a context's first tab, which creates it.
        """
        name = f"page{next(self.names)}"
        size = {"width": viewport[0], "height": viewport[1]} if viewport else None
        self.command("open_page", context=context, page=name, viewport=size, timezone=timezone)
        return Page(self, name)

    def close_context(self, context: str = "default") -> None:
        """Close a context's tabs and forget its cookies."""
        self.command("close_context", context=context)

    def close(self) -> None:
        """Quit the browser and the driver."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(b'{"op": "quit"}\n')
            self.proc.stdin.close()
            self.proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def _call(
    chromium: Chromium,
    page: str,
    selector: str | None,
    assertion: bool,
    method: str,
    /,
    *args: Any,
    **kwargs: Any,
) -> Any:
    timeout_ms = kwargs.get("timeout", DEFAULT_TIMEOUT_MS)
    return chromium.command(
        "call",
        timeout=timeout_ms / 1000 + 20,
        page=page,
        selector=selector,
        expect=assertion,
        method=method,
        args=list(args),
        kwargs=kwargs,
    )


class Page:
    """A tab: any Playwright Page method, called by name with JSON arguments."""

    def __init__(self, chromium: Chromium, name: str) -> None:
        self.chromium = chromium
        self.name = name

    def __getattr__(self, method: str) -> Any:
        return functools.partial(_call, self.chromium, self.name, None, False, method)

    def locator(self, selector: str) -> Locator:
        """Playwright's page.locator(selector)."""
        return Locator(self, selector)

    def console(self) -> list[str]:
        """What the page logged (console messages and uncaught errors)."""
        lines: list[str] = self.chromium.command("console", page=self.name)
        return lines


class Locator:
    """Playwright's Locator, by name; `expect` runs one of Playwright's web-first assertions."""

    def __init__(self, page: Page, selector: str) -> None:
        self.page = page
        self.selector = selector

    def __getattr__(self, method: str) -> Any:
        return functools.partial(
            _call, self.page.chromium, self.page.name, self.selector, False, method
        )

    def expect(self, assertion: str, *args: Any, **kwargs: Any) -> None:
        """expect(locator).<assertion>(*args, **kwargs), retried by Playwright until its timeout."""
        _call(self.page.chromium, self.page.name, self.selector, True, assertion, *args, **kwargs)
