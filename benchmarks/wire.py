"""A minimal HTTP/1.1 client and SSE parser on raw sockets, cheap enough for hundreds of streams.

Only what the benchmark needs: one request per connection (`Connection: close`),
bodies framed by Content-Length, chunked encoding or the end of the connection,
and SSE events parsed from bytes as they arrive, stamped with the CLOCK_MONOTONIC
time at which their bytes were read. Run it under gevent: its sockets are patched.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit


class HttpError(Exception):
    """The server answered with an unexpected status, or the connection broke."""


class Busy(HttpError):
    """The server refused the request for now: 503 with a Retry-After (seconds)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _address(base: str) -> tuple[str, int]:
    parts = urlsplit(base)
    return parts.hostname or "127.0.0.1", parts.port or 80


class Response:
    """An HTTP response whose body is read from its socket as it arrives."""

    def __init__(self, sock: socket.socket, status: int, headers: dict[str, str], rest: bytes):
        self.sock = sock
        self.status = status
        self.headers = headers
        self.chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        self.length = int(headers["content-length"]) if "content-length" in headers else None
        self.received = 0
        self.finished = False
        self._raw = b""
        self._first = rest

    def __enter__(self) -> Response:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def read_some(self) -> tuple[int, bytes]:
        """The body bytes of the next read (b"" at the end) and when they arrived (ns)."""
        while not self.finished:
            data, self._first = self._first, b""
            if not data:
                data = self.sock.recv(65536)
                if not data:
                    self.finished = True
                    if self.chunked or (self.length is not None and self.received < self.length):
                        raise HttpError("connection closed mid-body")
                    return time.monotonic_ns(), b""
            now = time.monotonic_ns()
            body = self._dechunk(data) if self.chunked else data
            self.received += len(body)
            if self.length is not None and self.received >= self.length:
                self.finished = True
            if body or self.finished:
                return now, body
        return time.monotonic_ns(), b""

    def _dechunk(self, data: bytes) -> bytes:
        self._raw += data
        parts = []
        while True:
            eol = self._raw.find(b"\r\n")
            if eol < 0:
                break
            size = int(self._raw[:eol].split(b";", 1)[0], 16)
            if size == 0:
                self.finished = True
                break
            end = eol + 2 + size
            if len(self._raw) < end + 2:
                break
            parts.append(self._raw[eol + 2 : end])
            self._raw = self._raw[end + 2 :]
        return b"".join(parts)

    def read_all(self) -> bytes:
        """The rest of the body."""
        parts = []
        while not self.finished:
            parts.append(self.read_some()[1])
        return b"".join(parts)

    def json(self) -> Any:
        """The rest of the body as JSON."""
        return json.loads(self.read_all() or b"null")


def open_request(
    base: str,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: Any = None,
    timeout: float = 10.0,
) -> Response:
    """Send a request (a JSON body if `body` is not None) and read the response head."""
    host, port = _address(base)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    payload = b""
    if body is not None:
        payload = json.dumps(body).encode()
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        data = b""
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                raise HttpError(f"{method} {path}: connection closed before the response")
            data += more
        head, _, rest = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        fields = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        return Response(sock, status, fields, rest)
    except BaseException:
        sock.close()
        raise


def call(
    base: str,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: Any = None,
    expect: tuple[int, ...] = (200, 201, 202),
    timeout: float = 10.0,
) -> Any:
    """One JSON request; raises HttpError unless the status is expected."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with open_request(base, method, path, headers=headers, body=body, timeout=timeout) as response:
        text = response.read_all()
        if response.status not in expect:
            message = f"{method} {path}: {response.status} {text[:300]!r}"
            if response.status == 503 and "retry-after" in response.headers:
                raise Busy(message, float(response.headers["retry-after"]))
            raise HttpError(message)
        return json.loads(text) if text else None


@dataclass(slots=True)
class Event:
    """One SSE block: an event (`event`, `data`, `id`), or only a comment / retry field."""

    event: str
    data: str
    id: str | None = None
    retry: int | None = None
    comment: bool = False


class SseParser:
    """Parses SSE from bytes fed as they arrive (chatsvc and the baseline end lines with \\n)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[Event]:
        """The blocks completed by these bytes."""
        self._buffer += data
        if b"\n\n" not in self._buffer:
            return []
        *blocks, self._buffer = self._buffer.split(b"\n\n")
        return [_parse_block(block) for block in blocks if block]


def _parse_block(block: bytes) -> Event:
    event = Event("message", "")
    data: list[str] = []
    for raw in block.split(b"\n"):
        line = raw.rstrip(b"\r")
        if line.startswith(b":"):
            event.comment = True
            continue
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"event":
            event.event = value.decode()
        elif name == b"data":
            data.append(value.decode())
        elif name == b"id":
            event.id = value.decode()
        elif name == b"retry":
            event.retry = int(value)
    if data:
        event.data = "\n".join(data)
    else:
        event.event = ""
    return event
