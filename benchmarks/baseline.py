"""The no-persistence baseline: the same litellm call streamed straight to SSE, no database.

`POST /stream {"content": ...}` calls `chatsvc.engine.llm.stream` (so litellm is called
exactly as chatsvc calls it) and writes every chunk as an SSE `delta` event shaped
like chatsvc's (`id:` the offset after it, data `{message_id, offset, text}`), then
`done`. It is served the way `chatsvc serve` serves: gunicorn with chatsvc's
gevent worker class and settings. What chatsvc costs on top of this is the price
of keeping every answer in Postgres.

    python -m benchmarks.baseline --port 8950 [--workers 1]

It reads the same environment as chatsvc (CHATSVC_MODEL, CHATSVC_LLM_API_BASE,
CHATSVC_LLM_API_KEY). Like chatsvc, the app is imported in each worker after gevent
patched it.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, request

from chatsvc import jsonio
from chatsvc.config import Settings
from chatsvc.server import Server, gunicorn_options

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def create_app(settings: Settings | None = None) -> Flask:
    """The baseline WSGI app (import it in the worker: litellm must load after gevent patched)."""
    from chatsvc.engine import llm  # noqa: PLC0415 - litellm must load after gevent patched

    settings = settings or Settings.from_env()
    app = Flask(__name__)

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", mimetype="text/plain")

    @app.post("/stream")
    def stream() -> Response:
        body = request.get_json(force=True)
        messages = [{"role": "user", "content": str(body["content"])}]
        message_id = str(uuid.uuid4())

        def events() -> Iterator[str]:
            yield "retry: 1000\n\n"
            offset = 0
            usage: dict[str, int] | None = None
            for piece in llm.stream(settings, settings.model, messages):
                if piece.text:
                    data = {"message_id": message_id, "offset": offset, "text": piece.text}
                    offset += len(piece.text)
                    yield f"event: delta\nid: {offset}\ndata: {jsonio.dumps(data)}\n\n"
                if piece.usage is not None:
                    usage = piece.usage
            done = {
                "message_id": message_id,
                "status": "completed",
                "content_length": offset,
                "usage": usage or {},
            }
            yield f"event: done\nid: {offset}\ndata: {jsonio.dumps(done)}\n\n"

        return Response(events(), mimetype="text/event-stream", headers=HEADERS)

    return app


class BaselineServer(Server):
    """gunicorn with chatsvc's options, serving the baseline app."""

    def load(self) -> Any:
        return create_app()


def main() -> None:
    """Serve the baseline on 127.0.0.1 until stopped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8950)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    options = gunicorn_options("127.0.0.1", args.port, args.workers, proc_name="chatsvc-baseline")
    BaselineServer(options).run()


if __name__ == "__main__":
    main()
