"""Test helpers: the app served in-process, an API client, an SSE reader, users."""

from __future__ import annotations

import codecs
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import gevent
import psycopg
import requests
from gevent.pywsgi import WSGIServer
from simple_websocket import Client

from chatsvc.config import Settings
from chatsvc.engine import users
from chatsvc.engine.runtime import Runtime
from chatsvc.fakellm import FakeLLM
from chatsvc.web.app import create_app

TEST_SETTINGS = Settings(
    checkpoint_ms=100,
    lease_s=3.0,
    heartbeat_s=15.0,
    offline_delay_s=0.002,
    pool_size=5,
    # In-process, one loop runs the servers, the fakes, the clients and the test itself,
    # so its lag is the test's; the tests of admission control turn it on.
    max_loop_lag_ms=0,
)


def make_user(
    db_url: str, name: str, *, admin: bool = False, token_limit: int | None = None
) -> str:
    """Create a user directly in the database and return a token."""
    with psycopg.connect(db_url) as conn:
        user = users.create_user(conn, name, admin=admin, token_limit=token_limit)
        return users.create_token(conn, user.id)


def new_conversation(conn: psycopg.Connection[Any]) -> tuple[Any, Any]:
    """A fresh user (a unique name) and an empty conversation of theirs, by SQL: their ids."""
    user = conn.execute(
        "INSERT INTO users (name) VALUES ('u' || gen_random_uuid()) RETURNING id"
    ).fetchone()[0]
    conversation = conn.execute(
        "INSERT INTO conversations (user_id) VALUES (%s) RETURNING id", (user,)
    ).fetchone()[0]
    return user, conversation


def wait_until(what: str, condition: Any, timeout: float = 30) -> None:
    """Poll state another process changes (there is no event to await from outside)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        gevent.sleep(0.02)


def query(db_url: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    """The rows of a query, as dicts (tests read the database directly)."""
    with psycopg.connect(db_url) as conn:
        cur = conn.execute(sql, params)
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def chunk(
    conn: psycopg.Connection[Any],
    message: Any,
    kind: str,
    start: int,
    text: str,
    *,
    update_row: bool = True,
) -> None:
    """Append a committed chunk of text or reasoning to a streaming answer, as a checkpoint
    does (and, unless `update_row` is False, advance the row's length column too)."""
    conn.execute(
        "INSERT INTO message_chunks (message_id, kind, start_offset, epoch, content) "
        "VALUES (%s, %s, %s, 1, %s)",
        (message, kind, start, text),
    )
    if not update_row:
        return
    column = "content_length" if kind == "text" else "reasoning_length"
    conn.execute(
        f"UPDATE messages SET {column} = {column} + %s WHERE id = %s", (len(text), message)
    )


class AppServer:
    """create_app() served by gevent's WSGI server on an ephemeral 127.0.0.1 port."""

    def __init__(self, db_url: str, settings: Settings | None = None) -> None:
        self.db_url = db_url
        self.settings = settings or TEST_SETTINGS
        self.app = create_app(self.settings, database_url=db_url)
        assert self.runtime.listener.connected.wait(10), "listener did not connect"
        self.server = WSGIServer(("127.0.0.1", 0), self.app, log=None, error_log=None)
        self.server.start()
        self.base = f"http://127.0.0.1:{self.server.server_port}"

    @property
    def runtime(self) -> Runtime:
        """The app's per-process runtime."""
        rt: Runtime = self.app.extensions["chatsvc"]
        return rt

    def stop(self) -> None:
        """Stop serving and stop the runtime."""
        self.server.stop(timeout=1)
        self.runtime.stop()


class FakeLLMServer:
    """The fake OpenAI-compatible LLM on an ephemeral 127.0.0.1 port (in this process)."""

    def __init__(self) -> None:
        self.app = FakeLLM()
        self.server = WSGIServer(("127.0.0.1", 0), self.app, log=None, error_log=None)
        self.server.start()
        self.api_base = f"http://127.0.0.1:{self.server.server_port}/v1"

    def settings(self, **overrides: Any) -> Settings:
        """TEST_SETTINGS with this server as the default model's provider, and `overrides`."""
        return TEST_SETTINGS.with_(
            model="openai/fake", llm_api_base=self.api_base, llm_api_key="sk-test", **overrides
        )

    def stop(self) -> None:
        """Stop serving."""
        self.server.stop(timeout=1)


class ApiClient:
    """requests with a base URL and a Bearer token."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base = base
        self.token = token
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send a request; the timeout defaults to 10 s."""
        kwargs.setdefault("timeout", 10)
        return self.session.request(method, self.base + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        """GET."""
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        """POST a JSON body."""
        if body is not None:
            kwargs["json"] = body
        return self.request("POST", path, **kwargs)

    def put(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        """PUT a JSON body."""
        if body is not None:
            kwargs["json"] = body
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        """DELETE."""
        return self.request("DELETE", path, **kwargs)

    def conversation(self, **body: Any) -> dict[str, Any]:
        """Create a conversation and return it."""
        response = self.post("/api/conversations", body)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    def send(self, conversation_id: str, content: str, **extra: Any) -> dict[str, Any]:
        """Send a message; returns the 202 body."""
        response = self.post(
            f"/api/conversations/{conversation_id}/messages", {"content": content, **extra}
        )
        assert response.status_code == 202, response.text
        result: dict[str, Any] = response.json()
        return result

    def ask(self, content: str) -> str:
        """Send `content` in a new conversation; returns the answer's id."""
        answer: str = self.send(self.conversation()["id"], content)["assistant_message"]["id"]
        return answer

    def wait_terminal(self, message_id: str, timeout: float = 20) -> dict[str, Any]:
        """Follow the message's SSE stream to `done`, then return the message row."""
        with gevent.Timeout(timeout):
            events = list(self.sse(f"/api/messages/{message_id}/stream"))
        assert events and events[-1].event == "done", events[-3:]
        result: dict[str, Any] = self.get(f"/api/messages/{message_id}").json()
        return result

    def sse(
        self,
        path: str,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
        control: bool = False,
    ) -> Iterator[SseEvent]:
        """The events of an SSE response until the server closes it.

        With `control`, also the blocks that are not events (retry:, comments), as event "".
        """
        response = self.get(path, headers=headers or {}, stream=True, timeout=timeout)
        assert response.status_code == 200, (response.status_code, response.text)
        try:
            for event in read_sse(response):
                if control or event.event:
                    yield event
        finally:
            response.close()


@dataclass
class SseEvent:
    """One parsed SSE event (or comment / retry field)."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        """The data as JSON."""
        return json.loads(self.data)


def read_sse(response: requests.Response) -> Iterator[SseEvent]:
    """Parse an SSE body as it arrives (WHATWG rules, enough for our server)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    buffer = ""
    current = SseEvent()
    data_lines: list[str] = []
    seen_field = False
    for chunk in response.iter_content(chunk_size=None):
        buffer += decoder.decode(chunk)
        while "\n" in buffer:
            line, buffer = buffer.split("\n", 1)
            line = line.rstrip("\r")
            if line == "":
                if seen_field:
                    current.data = "\n".join(data_lines)
                    if not data_lines:  # retry: or comments only: not an event
                        current.event = ""
                    yield current
                current, data_lines, seen_field = SseEvent(), [], False
                continue
            seen_field = True
            if line.startswith(":"):
                current.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                current.event = value
            elif name == "data":
                data_lines.append(value)
            elif name == "id":
                current.id = value
            elif name == "retry":
                current.retry = int(value)


@dataclass
class FollowResult:
    """What a reconnecting SSE client saw of one message."""

    text: str = ""
    connections: int = 0
    statuses: list[dict[str, Any]] = field(default_factory=list)
    done: dict[str, Any] | None = None
    last_id: str | None = None
    reasoning: str = ""
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)  # last state per call


def follow_message(
    bases: list[str],
    token: str,
    message_id: str,
    *,
    on_delta: Any = None,
    max_seconds: float = 60,
    parts: bool = False,
    drop_after: Any = None,
    distinct_tools: bool = False,
    resume: FollowResult | None = None,
) -> FollowResult:
    """Follow a message to `done` like EventSource: on any disconnect, reconnect with
    Last-Event-ID, to the next base URL that answers. Asserts no gap and no overlap.

    Without `parts` it is a client that knows only `delta` (and resumes from the id of
    the last one); with it, it also reads `reasoning` and `tool` and resumes from the
    id of the last event of any kind. `drop_after()`, when given, is how many events
    to read before dropping each connection, as a flaky network would. With
    `distinct_tools` it asserts no call's state comes twice in a row (true while no
    takeover re-sends a call: that is a new change with the same visible state). With
    `resume`, it reconnects as the client that saw that result would (after a `done`,
    to read on from where it was once the answer is continued)."""
    result = FollowResult() if resume is None else replace(resume, done=None, statuses=[])
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    deadline = gevent.Timeout(max_seconds, AssertionError(f"no done: {result}"))
    deadline.start()
    try:
        turn = 0
        while result.done is None:
            base = bases[turn % len(bases)]
            turn += 1
            headers = {"Last-Event-ID": result.last_id} if result.last_id else {}
            try:
                response = session.get(
                    f"{base}/api/messages/{message_id}/stream",
                    headers=headers,
                    stream=True,
                    timeout=(2, 30),
                )
            except requests.RequestException:
                gevent.sleep(0.1)
                continue
            if response.status_code == 204:
                # Everything was read but `done` was missed (the connection dropped
                # between the last delta and it): 204 says so; take the end state
                # from the message itself.
                message = session.get(f"{base}/api/messages/{message_id}", timeout=5).json()
                result.done = {k: message[k] for k in ("status", "content_length", "error")}
                break
            if response.status_code != 200:
                response.close()
                gevent.sleep(0.1)
                continue
            result.connections += 1
            budget = drop_after() if drop_after is not None else -1
            try:
                for event in read_sse(response):
                    if event.event == "delta":
                        data = event.json()
                        assert data["offset"] == len(result.text), "gap or overlap"
                        result.text += data["text"]
                        result.last_id = event.id
                        if on_delta is not None:
                            on_delta(result)
                    elif parts and event.event == "reasoning":
                        data = event.json()
                        assert data["offset"] == len(result.reasoning), "reasoning gap or overlap"
                        result.reasoning += data["text"]
                    elif parts and event.event == "tool":
                        data = event.json()
                        if distinct_tools:
                            assert result.tools.get(data["tool_call_id"]) != data, "twice"
                        result.tools[data["tool_call_id"]] = data
                    elif event.event == "status":
                        result.statuses.append(event.json())
                    elif event.event == "done":
                        result.done = event.json()
                        break
                    if parts and event.id is not None:
                        result.last_id = event.id
                    budget -= 1
                    if budget == 0:
                        break
            except (requests.RequestException, ConnectionError):
                pass  # the server went away mid-stream: reconnect
            finally:
                response.close()
            if result.done is None:
                gevent.sleep(0.05)
    finally:
        deadline.cancel()
    return result


class WsClient:
    """A WebSocket client speaking JSON frames."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        self.client = Client.connect(
            base.replace("http://", "ws://") + "/api/ws", headers=headers or {}
        )

    def send(self, frame: Any) -> None:
        self.client.send(frame if isinstance(frame, str) else json.dumps(frame))

    def receive(self, timeout: float = 10) -> dict[str, Any]:
        raw = self.client.receive(timeout=timeout)
        assert raw is not None, "no frame in time"
        frame: dict[str, Any] = json.loads(raw)
        return frame

    def until(self, predicate: Any, timeout: float = 20) -> list[dict[str, Any]]:
        """Frames up to and including the first that satisfies predicate."""
        frames = []
        with gevent.Timeout(timeout):
            while True:
                frames.append(self.receive(timeout))
                if predicate(frames[-1]):
                    return frames

    def close(self) -> None:
        self.client.close()


def frames_text(frames: list[dict[str, Any]], message_id: str) -> str:
    """The text of a message's delta frames, asserting no gap and no overlap."""
    offset, parts = None, []
    for frame in frames:
        if frame["type"] == "delta" and frame["message_id"] == message_id:
            assert offset is None or frame["offset"] == offset, "gap or overlap"
            offset = frame["offset"] + len(frame["text"])
            parts.append(frame["text"])
    return "".join(parts)
