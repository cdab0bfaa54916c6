"""A fake tool server: HTTP tools on 127.0.0.1 that count the calls they receive.

Every request is logged with its `Idempotency-Key`. A tool marked idempotent
here behaves as a well-made idempotent tool does: a repeated key gets the
stored result and has no second effect. So `effects(key)` is what a real side
effect would have been (charges made, mails sent), and `attempts(key)` is how
often chatsvc sent the call.

Paths (the tool's behaviour; the last part of the URL is free for the tool's name):
    /ok/<name>         200, JSON {"tool": name, "arguments": ..., "effect": n}
    /text/<name>       200, plain text (not JSON)
    /fail/<name>       500 with a JSON error body
    /slow/<name>       like /ok after `slow_s` seconds (default 1), or until released
    /hang/<name>       never answers within any sane timeout
Append `?idempotent=1` to deduplicate by key.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import gevent
import gevent.event
from gevent.pywsgi import WSGIServer


@dataclass
class Received:
    """One request as the tool server saw it."""

    path: str
    key: str | None
    body: dict[str, Any]


@dataclass
class FakeTools:
    """The WSGI app; every request is in `received`, every effect in `effect_count`."""

    slow_s: float = 1.0
    received: list[Received] = field(default_factory=list)
    effect_count: dict[str | None, int] = field(default_factory=dict)
    results: dict[str, bytes] = field(default_factory=dict)
    release: gevent.event.Event = field(default_factory=gevent.event.Event)
    arrived: gevent.event.Event = field(default_factory=gevent.event.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attempts(self, key: str) -> int:
        """How many requests carried this Idempotency-Key."""
        return sum(1 for r in self.received if r.key == key)

    def effects(self, key: str) -> int:
        """How many times the tool's effect happened for this key."""
        return self.effect_count.get(key, 0)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(length) or b"{}")
        key = environ.get("HTTP_IDEMPOTENCY_KEY")
        path = environ["PATH_INFO"]
        idempotent = parse_qs(environ.get("QUERY_STRING", "")).get("idempotent") == ["1"]
        with self.lock:
            self.received.append(Received(path, key, body))
        self.arrived.set()
        behaviour = path.strip("/").split("/")[0]
        if behaviour == "hang":
            gevent.sleep(3600)
        if behaviour == "slow":
            self.release.wait(timeout=self.slow_s)
        if behaviour == "fail":
            start_response("500 Internal Server Error", [("Content-Type", "application/json")])
            return iter([b'{"error": "the tool broke"}'])
        if idempotent and key is not None and key in self.results:
            output = self.results[key]
        else:
            with self.lock:
                self.effect_count[key] = self.effect_count.get(key, 0) + 1
                effect = self.effect_count[key]
            output = self._output(behaviour, body, effect)
            if idempotent and key is not None:
                self.results[key] = output
        kind = "text/plain" if behaviour == "text" else "application/json"
        start_response("200 OK", [("Content-Type", kind)])
        return iter([output])

    @staticmethod
    def _output(behaviour: str, body: dict[str, Any], effect: int) -> bytes:
        if behaviour == "text":
            return f"plain text for {body.get('name')}".encode()
        return json.dumps(
            {"tool": body.get("name"), "arguments": body.get("arguments"), "effect": effect}
        ).encode()


class FakeToolServer:
    """FakeTools served on an ephemeral 127.0.0.1 port, in this process."""

    def __init__(self, slow_s: float = 1.0) -> None:
        self.app = FakeTools(slow_s=slow_s)
        self.server = WSGIServer(("127.0.0.1", 0), self.app, log=None, error_log=None)
        self.server.start()
        self.base = f"http://127.0.0.1:{self.server.server_port}"

    def url(self, behaviour: str, name: str, *, idempotent: bool = False) -> str:
        """The URL of a tool with this behaviour."""
        return f"{self.base}/{behaviour}/{name}" + ("?idempotent=1" if idempotent else "")

    def stop(self) -> None:
        """Stop serving."""
        self.app.release.set()
        self.server.stop(timeout=1)
