"""What the AI SDK surface costs per delta next to chatsvc's own SSE, for the same answer.

Both paths are fed the same committed text deltas, as the hub hands them to a
follower, and write them as they go on the wire: `delta` events of
`GET /api/messages/{id}/stream` (`followers.MessageFollower`, `sse.format_event`)
against `text-delta` chunks of `POST /api/chat` (`ChatStream`, `chunks.encode`).
Neither touches the database: a delta that extends the part being sent never
does (docs/ai-sdk.md), and that is the common case.

    python -m benchmarks.chunk_overhead [--deltas 200000] [--size 4]
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable
from typing import Any

from chatsvc.engine.events import Delta
from chatsvc.engine.followers import MessageFollower
from chatsvc.engine.hub import Hub
from chatsvc.engine.sources import Sources
from chatsvc.engine.tracks import Track
from chatsvc.web import chunks
from chatsvc.web.chat_stream import ChatStream
from chatsvc.web.sse import format_event


def _deltas(message_id: uuid.UUID, count: int, size: int) -> list[Delta]:
    conversation = uuid.uuid4()
    text = "héllo wörld, " * (size // 13 + 1)
    return [
        Delta(conversation, message_id, i * size, (i + 1) * size, text[:size]) for i in range(count)
    ]


def _timed(write: Callable[[Delta], str], deltas: list[Delta]) -> tuple[float, int]:
    """CPU seconds and bytes written for every delta."""
    written = 0
    started = time.process_time()
    for delta in deltas:
        written += len(write(delta).encode())
    return time.process_time() - started, written


def measure(count: int, size: int) -> dict[str, Any]:
    """Per delta: CPU microseconds and bytes of each surface."""
    sources = Sources(pool=None, hub=Hub(), heartbeat_s=15.0, rows=None)  # type: ignore[arg-type]
    message_id = uuid.uuid4()
    deltas = _deltas(message_id, count, size)

    follower = MessageFollower(sources)
    follower.tracks[message_id] = Track(message_id, 0, 1)

    def sse(delta: Delta) -> str:
        return "".join(format_event(out) for out in follower.on_event(delta))

    stream = ChatStream(sources, message_id)
    stream.open = stream.last = ("text", 0)

    def chat(delta: Delta) -> str:
        return "".join(chunks.encode(chunk) for chunk in stream.on([delta]))

    results = {}
    for name, write in (("sse", sse), ("aisdk", chat)):
        cpu, written = _timed(write, deltas)
        results[name] = {"cpu_us": cpu / count * 1e6, "bytes": written / count}
    return results


def main() -> None:
    """Print the two surfaces' cost per delta."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deltas", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=4, help="code points per delta")
    args = parser.parse_args()
    results = measure(args.deltas, args.size)
    print(f"{'surface':<8} {'CPU µs/delta':>13} {'bytes/delta':>12}")
    for name, found in results.items():
        print(f"{name:<8} {found['cpu_us']:>13.2f} {found['bytes']:>12.1f}")


if __name__ == "__main__":
    main()
