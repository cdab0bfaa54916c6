"""The WebSocket transport (docs/protocol.md): the same operations over one socket.

Frames are JSON objects with a `type`. Client → server: `auth`, `subscribe`,
`send`, `cancel`, `join_project`. Server → client: `message`, `delta`,
`reasoning`, `tool`, `status`, `done`, `error`, and the project room events,
with the same fields, positions (`position`, as in SSE's `id:`) and offset rules as SSE
(the followers are the same code). A bad frame gets an `error` frame
and the socket stays usable; before `auth` only `auth` is accepted (a browser's
session cookie, or a Bearer header on the upgrade request, authenticates at once).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import Any
from uuid import UUID

import gevent
import simple_websocket
from flask import Blueprint, Flask, Response, current_app, request
from gevent.lock import Semaphore
from simple_websocket import ConnectionClosed
from wsproto.events import AcceptConnection

from chatsvc import jsonio, logs
from chatsvc.engine import commands, conversations, projects, users
from chatsvc.engine import messages as message_rows
from chatsvc.engine.followers import (
    ConversationFollower,
    Follower,
    MessageFollower,
    Out,
    ProjectFollower,
)
from chatsvc.engine.hub import Resync, Revoked, Subscriber
from chatsvc.engine.messages import Message
from chatsvc.engine.positions import Cursor, Position
from chatsvc.engine.runtime import Runtime
from chatsvc.engine.users import User
from chatsvc.errors import ApiError, InvalidRequest, NotFound, TooLarge, Unauthorized
from chatsvc.web import auth, observe
from chatsvc.web.context import connection, runtime
from chatsvc.web.declare import serialise
from chatsvc.web.event_schemas import (
    CLIENT_FRAMES,
    AuthFrame,
    CancelFrame,
    ErrorFrame,
    JoinProjectFrame,
    SendFrame,
    SubscribeFrame,
)
from chatsvc.web.parsing import parse, parse_json

log = logging.getLogger(__name__)

bp = Blueprint("ws", __name__)

# Close code 1012 "service restart": the client should reconnect (elsewhere).
CLOSE_RESTART = 1012
# Close code 1008 "policy violation": the user lost access; reconnecting will not help.
CLOSE_POLICY = 1008


def init_app(app: Flask) -> None:
    """Serve /api/ws; the socket library enforces a hard frame limit above ours."""
    settings = runtime_of(app).settings
    app.config["SOCK_SERVER_OPTIONS"] = {
        "ping_interval": settings.heartbeat_s,
        "max_message_size": 4 * settings.max_body_bytes,
    }
    app.register_blueprint(bp)


def runtime_of(app: Flask) -> Runtime:
    """The app's runtime (outside a request)."""
    rt: Runtime = app.extensions["chatsvc"]
    return rt


@bp.route("/api/ws", websocket=True)
def websocket() -> Response:
    """One WebSocket connection."""
    ws = Upgrade(request.environ, **current_app.config["SOCK_SERVER_OPTIONS"])
    with contextlib.suppress(ConnectionClosed):
        connection = Connection(ws, runtime(), None)
        # A session cookie or Bearer header on the upgrade request authenticates at once.
        user = auth.page_user()
        if user is not None:
            with contextlib.suppress(Unauthorized):
                connection.sign_in(user, auth.lookup_later())
        connection.run()
    with contextlib.suppress(Exception):
        ws.close()
    return Upgraded(ws.mode)


class Upgrade(simple_websocket.Server):  # type: ignore[misc]
    """simple-websocket's server socket, whose `101` response carries the X-Request-ID too
    (the server writes that response itself, not Flask)."""

    def __init__(self, environ: dict[str, Any], **options: Any) -> None:
        rid = environ.get(observe.ENVIRON_KEY) or ""
        self._extra = [(observe.HEADER.encode(), rid.encode())] if rid else []
        super().__init__(environ, **options)

    def handshake(self) -> None:
        """Accept the upgrade, with the extra headers."""
        connection: Any = getattr(self, "ws")  # noqa: B009 - set by simple-websocket
        self.ws = _AddHeaders(connection, self._extra)
        try:
            super().handshake()
        finally:
            self.ws = connection


class _AddHeaders:
    """A wsproto connection whose AcceptConnection gets extra headers."""

    def __init__(self, connection: Any, headers: list[tuple[bytes, bytes]]) -> None:
        self._connection = connection
        self._headers = headers

    def send(self, event: Any) -> bytes:
        if isinstance(event, AcceptConnection):
            event = dataclasses.replace(event, extra_headers=[*event.extra_headers, *self._headers])
        data: bytes = self._connection.send(event)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class Upgraded(Response):
    """What the view returns once the socket is closed: nothing more goes on the wire."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def __call__(self, environ: Any, start_response: Any) -> Any:
        if self.mode == "gunicorn":
            raise StopIteration  # gunicorn's signal that the socket was taken over
        if self.mode == "werkzeug":
            return super().__call__(environ, start_response)
        return []


class Connection:
    """A socket's state: who it is, what it follows, and what its sends have used."""

    def __init__(self, ws: Any, rt: Runtime, user: User | None) -> None:
        self.ws = ws
        self.rt = rt
        self.user = user
        self.send_lock = Semaphore()
        self.follows: dict[tuple[str, UUID], gevent.Greenlet] = {}
        self.sent_answers: set[UUID] = set()
        self.watch: gevent.Greenlet | None = None
        self.tokens_used = 0
        self.request_id = logs.REQUEST_ID.get()  # of the upgrade, for its followers' lines
        # `on_<type>` handles a frame validated as CLIENT_FRAMES[type].
        self.handlers: dict[str, Callable[[Any], None]] = {
            kind: getattr(self, f"on_{kind}") for kind in CLIENT_FRAMES
        }

    def run(self) -> None:
        """Read frames until the client or the server goes away."""
        try:
            while not self.rt.hub.closing:
                raw = self.ws.receive(timeout=1.0)
                if raw is not None:
                    self.handle(raw)
            self.ws.close(CLOSE_RESTART, "server restarting; reconnect")
        except ConnectionClosed:
            pass
        finally:
            gevent.killall([*self.follows.values(), *filter(None, [self.watch])], block=False)

    def handle(self, raw: str | bytes) -> None:
        """Dispatch one frame; any failure becomes an error frame."""
        frame: dict[str, Any] = {}
        try:
            if len(raw) > self.rt.settings.max_body_bytes:
                raise TooLarge("The frame is too large.")
            frame = parse_json(raw)
            if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
                raise InvalidRequest("A frame must be a JSON object with a string 'type'.")
            model = CLIENT_FRAMES.get(frame["type"])
            if model is None:
                raise InvalidRequest(f"Unknown frame type {frame['type']!r}.")
            if self.user is None and frame["type"] != "auth":
                raise Unauthorized("Send an 'auth' frame with your token first.")
            self.handlers[frame["type"]](parse(model, frame, self.rt.settings))
        except ApiError as error:
            self.error(error.code, error.message, frame)
        except Exception:
            log.exception("websocket frame failed")
            self.error("internal_error", "Something went wrong on our side.", {})

    def error(self, code: str, message: str, frame: dict[str, Any]) -> None:
        """An `error` frame with the API's code and message (and the offending frame's type)."""
        request = frame.get("type") if isinstance(frame, dict) else None
        error = ErrorFrame(
            type="error",
            code=code,
            message=message,
            request=request if isinstance(request, str) else None,
        )
        self.emit(error.model_dump(exclude_none=True))

    def emit(self, body: dict[str, Any]) -> None:
        """Send one frame (one writer at a time: frames must not interleave)."""
        data = jsonio.dumps(body)
        with self.send_lock:
            self.ws.send(data)

    # --- frames -----------------------------------------------------------------------

    def on_auth(self, frame: AuthFrame) -> None:
        def lookup() -> User | None:
            with connection(self.rt) as conn:
                found = users.user_by_token(conn, frame.token)
            return None if found is None else found[0]

        user = lookup()
        if user is None:
            raise Unauthorized("This token is not valid.")
        self.sign_in(user, lookup)

    # --- access ---------------------------------------------------------------------------

    def sign_in(self, user: User, lookup: Callable[[], User | None]) -> None:
        """Serve `user` from now on, until they lose access (disabled, tokens revoked)."""
        sub = self.rt.hub.subscribe(user.id)
        # A revocation committed between `lookup` and the subscription was not heard.
        if lookup() is None:
            sub.close()
            raise Unauthorized("This token is not valid.")
        if self.watch is not None:
            self.watch.kill(block=False)
        self.user = user
        self.watch = gevent.spawn(self._watch_access, sub, lookup)

    def _watch_access(self, sub: Subscriber, lookup: Callable[[], User | None]) -> None:
        """Close the socket when its user's access is revoked on any instance."""
        try:
            while True:
                item = sub.get(timeout=3600)
                if isinstance(item, Revoked):
                    break
                # Events were lost (the listener reconnected): one may have been this.
                if isinstance(item, Resync) and not self._still_allowed(lookup):
                    break
        finally:
            sub.close()
        self.error("unauthorized", "Access was revoked: this user or their token is gone.", {})
        with self.send_lock, contextlib.suppress(ConnectionClosed):
            self.ws.close(CLOSE_POLICY, "access revoked")

    def on_subscribe(self, frame: SubscribeFrame) -> None:
        user = self._user()
        with connection(self.rt) as conn:
            conversations.get_visible(conn, user.id, frame.conversation_id)
            if frame.message_id is not None:
                message = message_rows.get(conn, user.id, frame.message_id)
                if message is None or message.conversation_id != frame.conversation_id:
                    raise NotFound("No such message in this conversation.")
        if frame.message_id is None:
            if frame.offset is not None:
                raise InvalidRequest("An offset needs a message_id.")
            self._follow_conversation(frame.conversation_id)
        else:
            offset = 0 if frame.offset is None else frame.offset
            self._follow_message(frame.message_id, Position.parse(str(offset), "offset"))

    def on_send(self, frame: SendFrame) -> None:
        sent = commands.send(
            self.rt,
            self._user(),
            frame.conversation_id,
            frame.content,
            model=frame.model,
            client_message_id=frame.client_message_id,
        )
        answer = sent.exchange.assistant_message
        self.sent_answers.add(answer.id)
        if ("conversation", frame.conversation_id) not in self.follows:
            self.emit({"type": "message", **serialise(Message, sent.exchange.user_message)})
            self.emit({"type": "message", **serialise(Message, answer)})
            self._follow_message(answer.id, Position(answer.content_length))

    def on_cancel(self, frame: CancelFrame) -> None:
        commands.cancel_conversation(self.rt, self._user(), frame.conversation_id)

    def on_join_project(self, frame: JoinProjectFrame) -> None:
        user = self._user()
        with connection(self.rt) as conn:
            projects.get_member_project(conn, user.id, frame.project_id)
        follower = ProjectFollower(self.rt.sources)
        self._start(
            ("project", frame.project_id), follower, follower.open(frame.project_id, user.id)
        )

    @staticmethod
    def _still_allowed(lookup: Callable[[], User | None]) -> bool:
        try:
            return lookup() is not None
        except ApiError:  # the database is away: keep serving, look again at the next resync
            return True

    # --- following ----------------------------------------------------------------------

    def _user(self) -> User:
        assert self.user is not None
        return self.user

    def _follow_conversation(self, conversation_id: UUID, cursor: Cursor | None = None) -> None:
        follower = ConversationFollower(self.rt.sources)
        self._start(
            ("conversation", conversation_id), follower, follower.open(conversation_id, cursor)
        )

    def _follow_message(self, message_id: UUID, position: Position) -> None:
        follower = MessageFollower(self.rt.sources)
        _, first = follower.open(message_id, position)
        self._start(("message", message_id), follower, first)

    def _start(self, key: tuple[str, UUID], follower: Follower, first: list[Out]) -> None:
        """Forward a follower's events as frames, replacing an earlier follow of the same thing."""
        earlier = self.follows.pop(key, None)
        if earlier is not None:
            earlier.kill(block=False)
        self.follows[key] = gevent.spawn(self._forward, key, follower, first)

    def _forward(self, key: tuple[str, UUID], follower: Follower, first: list[Out]) -> None:
        logs.REQUEST_ID.set(self.request_id)
        try:
            for out in follower.events(first):
                if out is not None:  # heartbeats: the socket pings by itself
                    self.emit(self._frame(out))
                    if follower.sub is not None:
                        follower.sub.delivered("websocket")
        except ConnectionClosed:
            pass
        except ApiError as error:
            self.error(error.code, error.message, {})
        finally:
            follower.close()
            if self.follows.get(key) is gevent.getcurrent():
                del self.follows[key]

    def _frame(self, out: Out) -> dict[str, Any]:
        frame = {"type": out.event, **out.data}
        if out.position is not None:
            # What `subscribe` takes as `offset` to resume this answer after this frame.
            frame["position"] = str(out.position)
        if out.event == "done":
            message_id = out.data["message_id"]
            if message_id in self.sent_answers:
                self.sent_answers.discard(message_id)
                usage = out.data["usage"]
                self.tokens_used += usage["prompt_tokens"] + usage["completion_tokens"]
            frame["tokens_used"] = self.tokens_used
            with connection(self.rt) as conn:
                used = users.usage(conn, self._user().id)
            frame["user_tokens_used"] = used.total_tokens
            frame["token_limit"] = used.token_limit
        return frame
