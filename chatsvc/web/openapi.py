"""The OpenAPI 3.1 description (served at /openapi.json), assembled from the declarations.

Every operation comes from a `declare.route`, every schema from the pydantic
models in `schemas` and `event_schemas`. What is written here is only what
cannot be derived: the longer prose, the SSE framing, the WebSocket and the
conversation page (served outside the API's routes).
"""

from __future__ import annotations

from functools import cache
from textwrap import dedent
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode

from chatsvc.errors import (
    InvalidJson,
    InvalidRequest,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    ValidationError,
)
from chatsvc.web import event_schemas, schemas
from chatsvc.web.auth import COOKIE
from chatsvc.web.declare import OPERATIONS, Operation, body_optional

JSON = "application/json"
EVENT_STREAM = "text/event-stream"
AUTHENTICATED: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"cookieAuth": []}]
BODY_ERRORS = (InvalidJson, TooLarge, UnsupportedMediaType, ValidationError)


def doc(text: str) -> str:
    """A triple-quoted description, dedented and stripped."""
    return dedent(text).strip()


# --- prose --------------------------------------------------------------------------

NOT_FOUND_WITH_IDS = "Unknown ids, ids that are not UUIDs and invisible resources are all 404."

SSE_COMMON = doc("""
    The stream starts with `retry: 1000`; `: ping` comments go out at least every
    CHATSVC_HEARTBEAT_S seconds (default 15) when nothing else does. Only committed text is
    ever sent, and the deltas of a message concatenate, in offset order, to its final content
    with no gap and no overlap across any number of reconnects. Offsets count Unicode code
    points. Each event's `data:` is JSON, declared in `x-sse-events` of the 200 response.
""")

PARTS_COMMON = doc("""
    An answer with reasoning or tool calls adds `reasoning` events (its reasoning text, with
    the same no-gap, no-overlap rule in its own offsets) and `tool` events (a tool part's new
    state; the last one for a call is its current state); a client that knows only `delta`
    still receives exactly the answer text. What a client lacks on connect is sent in the
    order of the answer's parts. Once an answer has a reasoning or tool part, every event of
    it carries a composite position as its `id:`: `<content>.<reasoning>.<tools>`, the code
    points of text and of reasoning sent and the number of tool part changes sent; `done`
    carries the final one. A bare integer always means an offset in `content` with nothing
    else received yet, so a client starting from 0 receives every part.
""")

DESCRIPTIONS = {
    "create_session": "The only /api route without authentication.",
    "delete_session": "Clears the cookie whether or not the session is still live.",
    "add_member": "404 when the project or the user does not exist.",
    "remove_member": "404 when the project does not exist or the user is not a member.",
    "project_events": doc("""
        A long-lived Server-Sent Events stream for a page showing a project: a conversation
        was created or deleted, an answer started or finished streaming. It ends when the
        caller stops being a member.
    """)
    + "\n\n"
    + SSE_COMMON,
    "create_conversation": doc("""
        Without `project_id` it is private to its creator; with one it is visible to every
        member of the project (404 when the caller is not a member).
    """),
    "get_conversation": NOT_FOUND_WITH_IDS,
    "get_message": NOT_FOUND_WITH_IDS,
    "send_message": doc("""
        The user message and the assistant answer (status `streaming`) exist before this
        returns. Only one answer streams per conversation at a time (409). 503 also when this
        server is shutting down.
    """),
    "cancel_conversation": "404 also when the conversation has no answer at all.",
    "chat": doc("""
        A drop-in backend for the Vercel AI SDK's `useChat` with `DefaultChatTransport`
        (docs/ai-sdk.md). The body is the transport's; the database holds the history, so only
        the last message is read (a user message, its text parts): its `id` is the send's
        `client_message_id`, so a retried POST starts nothing new and gets the answer's stream
        replayed from `start`. `id` is a conversation's UUID, or any other key, which names a
        private conversation of the caller's, created by the first POST with it.

        The answer is the SDK's UI message stream: `data:` events each holding one chunk
        (`x-sse-data`), ending with `data: [DONE]`. `start` carries the stored answer's id;
        its parts follow in order as `reasoning-*`, `text-*` and `tool-*` chunks, with
        `start-step`/`finish-step` around each model call; then `message-metadata` (the
        answer's `status`, `usage`, `content_length`), then `finish` (`finishReason` `stop`
        when completed, `interrupted` when interrupted), `abort` (cancelled) or `error`
        (failed). A takeover after a crash only adds a transient `data-chatsvc-status` chunk:
        the text goes on in the same part. Only committed text is sent. Disconnecting never
        cancels; `POST /api/messages/{id}/cancel` with the id of `start` does.
    """),
    "chat_stream": doc("""
        What `DefaultChatTransport.reconnectToStream` asks after a reload: the answer
        streaming in this chat, replayed from `start` (one delta per part), then live to its
        end, as for `POST /api/chat`. 204 when nothing streams in it, and for ids the caller
        has no chat of (nothing leaks).
    """),
    "message_stream": doc("""
        The position is the `Last-Event-ID` header, else `?offset=`, else 0: a bare offset in
        the content, or a composite position. The server first sends, as one `delta`,
        everything committed after the offset (nothing if there is none), then live deltas,
        then `done`, and closes. `delta`, `reasoning`, `tool` and `done` carry `id:` (the
        position after them); `status` does not. 204 when the message has finished and the
        position is the end of everything (so `EventSource` stops reconnecting): a bare offset
        equal to its length when it has no reasoning or tool part, or a composite position equal
        to its final one. 400 when the position is neither a non-negative integer nor a
        composite position, or is beyond what is committed.
    """)
    + "\n\n"
    + PARTS_COMMON
    + "\n\n"
    + SSE_COMMON,
    "conversation_stream": doc("""
        For a page that stays open on a conversation: every new message (`message`), and
        `delta`, `reasoning`, `tool`, `status`, `done` for its answers. The `id:` of every event
        but `status` is `<message_id>:<position>` (a bare offset, or a composite position once
        the answer has parts), so a reconnect with `Last-Event-ID` resumes the right answer at
        the right place and then follows later messages (without it, every message is
        replayed). 400 when Last-Event-ID is not of that form, its position is beyond what is
        committed, or `?offset=` is given.
    """)
    + "\n\n"
    + PARTS_COMMON
    + "\n\n"
    + SSE_COMMON,
}

PATH_PARAMS = {
    "project_id": "A project the caller is a member of.",
    "conversation_id": "A conversation the caller may see.",
    "message_id": "A message in a conversation the caller may see.",
    "name": "A member's user name.",
    "chat_id": "The chat's `id` as `POST /api/chat` received it: a conversation UUID or a key.",
}

ERROR_RESPONSES = {
    400: ("BadRequest", "`invalid_json` or `invalid_request` (a bad query parameter or offset)."),
    401: ("Unauthorized", "`unauthorized`: no valid bearer token or session cookie."),
    404: ("NotFound", "`not_found`: no such resource, or one the caller may not see (never 403)."),
    409: ("StreamActive", "`stream_active`: an answer is still streaming in this conversation."),
    413: ("TooLarge", "`too_large`: the body, or `content`, is longer than allowed."),
    415: ("UnsupportedMediaType", "`unsupported_media_type`: send `application/json`."),
    422: ("ValidationError", "`validation_error`: not a JSON object, or a bad or unknown field."),
    429: ("TokenLimitExceeded", "`token_limit_exceeded`: the caller's token limit is used up."),
    503: (
        "Unavailable",
        "`unavailable`: no database, this server is shutting down, or it is too busy to start "
        "an answer.",
    ),
}
ERROR_HEADERS = {
    401: {
        "WWW-Authenticate": {
            "description": '`Bearer realm="chatsvc"`.',
            "schema": {"type": "string"},
        }
    },
    503: {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}},
}

# SSE routes read these themselves (`sse.py`), with the one strict offset parser.
LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "description": "The `id:` of the last event received; browsers send it on reconnect. A "
    "bare integer is an offset in the content; `<content>.<reasoning>.<tools>` a composite "
    "position.",
    "schema": {"type": "string"},
}
SSE_PARAMETERS: dict[str, list[dict[str, Any]]] = {
    "message_stream": [
        LAST_EVENT_ID,
        {
            "name": "offset",
            "in": "query",
            "description": "Where to start when there is no Last-Event-ID: an offset in the "
            "content, or a composite position `<content>.<reasoning>.<tools>`.",
            "schema": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+\.[0-9]+)?$"},
        },
    ],
    "conversation_stream": [
        LAST_EVENT_ID,
        {
            "name": "last_event_id",
            "in": "query",
            "description": "Same as the Last-Event-ID header, for a first connection.",
            "schema": {"type": "string"},
        },
    ],
}
SSE_HEADERS = {
    "Cache-Control": {"description": "`no-cache`.", "schema": {"type": "string"}},
    "X-Accel-Buffering": {
        "description": "`no`: proxies must not buffer.",
        "schema": {"type": "string"},
    },
}
CHAT_HEADERS = {
    **SSE_HEADERS,
    "x-vercel-ai-ui-message-stream": {
        "description": "`v1`: the AI SDK's UI message stream.",
        "schema": {"type": "string"},
    },
}
SSE_EXAMPLES = {
    "chat": (
        'data: {"type":"start","messageId":"3f2c…"}\n\n'
        'data: {"type":"start-step"}\n\n'
        'data: {"type":"text-start","id":"text-0"}\n\n'
        'data: {"type":"text-delta","id":"text-0","delta":"Hello"}\n\n'
        'data: {"type":"text-end","id":"text-0"}\n\n'
        'data: {"type":"finish-step"}\n\n'
        'data: {"type":"message-metadata","messageMetadata":{"status":"completed",…}}\n\n'
        'data: {"type":"finish","finishReason":"stop"}\n\n'
        "data: [DONE]\n\n"
    ),
    "message_stream": (
        "retry: 1000\n\n"
        "event: delta\nid: 12\n"
        'data: {"message_id":"…","offset":0,"text":"Hello there!"}\n\n'
        "event: done\nid: 12\n"
        'data: {"message_id":"…","status":"completed","content_length":12,"usage":{…}}\n\n'
    ),
    "conversation_stream": (
        "retry: 1000\n\n"
        "event: message\nid: 3f2c…:0\n"
        'data: {"id":"3f2c…","role":"assistant","status":"streaming","content":"",…}\n\n'
        "event: delta\nid: 3f2c…:5\n"
        'data: {"message_id":"3f2c…","offset":0,"text":"Hello"}\n\n'
    ),
    "project_events": (
        "retry: 1000\n\n"
        "event: stream.started\n"
        'data: {"project_id":"…","conversation_id":"…","message_id":"…","user_id":"…"}\n\n'
    ),
    "user_events": (
        "retry: 1000\n\n"
        "event: conversation.updated\n"
        'data: {"project_id":null,"conversation_id":"…","title":"How do I…"}\n\n'
    ),
}

WEBSOCKET_DESCRIPTION = doc("""
    Upgrade to a WebSocket carrying the same operations as JSON frames with a `type`
    (`x-websocket-frames` lists them). The server sends the events of the SSE streams as
    frames: the event name as `type`, plus the event's data; `done` also reports the tokens
    used. A bad frame gets an `error` frame and the connection stays usable. Successful
    commands are not acknowledged: `send` is answered by the two `message` frames and then
    the answer's events.

    A connection authenticates with a bearer token or the session cookie on the upgrade
    request, or with an `auth` frame; until then every other frame gets an `unauthorized`
    error. When the server shuts down it closes the socket with code 1012: reconnect and
    subscribe again from the last offset. `subscribe`'s `offset` is an integer (an offset in the
    answer's content, nothing of its other parts received yet) or a composite position
    `<content>.<reasoning>.<tools>` as a string, as in the `id:` of the SSE streams.
""")

PAGE_DESCRIPTION = doc("""
    The conversation rendered on the server, then following
    `/api/conversations/{conversation_id}/stream`. Without a session the page asks for a
    token and exchanges it through `POST /api/session`.
""")


# --- schemas ------------------------------------------------------------------------


class _Generator(GenerateJsonSchema):
    def field_title_should_be_set(self, schema: Any) -> bool:
        return False  # property names say it already


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _declared_types(ops: list[Operation]) -> list[tuple[Any, JsonSchemaMode]]:
    found: list[tuple[Any, JsonSchemaMode]] = [(schemas.Error, "serialization")]
    for op in ops:
        if op.body is not None:
            found.append((op.body, "validation"))
        if op.response is not None:
            found.append((op.response, "serialization"))
        found += [(t, "serialization") for t in (op.events or {}).values()]
    found += [(t, "validation") for t in event_schemas.CLIENT_FRAMES.values()]
    found += [(t, "serialization") for t in event_schemas.SERVER_FRAMES.values()]
    return list(dict.fromkeys(found))


def _components(types: list[tuple[Any, JsonSchemaMode]]) -> tuple[dict[Any, Any], dict[str, Any]]:
    """Each type's reference, and the component schemas they need."""
    inputs = [((t, mode), mode, TypeAdapter(t).core_schema) for t, mode in types]
    generator = _Generator(ref_template="#/components/schemas/{model}")
    refs, defs = generator.generate_definitions(inputs)
    return {key: refs[(key, mode)] for key, mode, _ in inputs}, dict(sorted(defs.items()))


# --- operations ---------------------------------------------------------------------


def _errors(op: Operation) -> dict[str, Any]:
    classes = list(op.errors)
    if op.body is not None:
        classes += BODY_ERRORS
    if op.query is not None:
        classes.append(InvalidRequest)
    if op.auth == "required":
        classes += [Unauthorized, Unavailable]
    elif op.auth == "optional":
        classes.append(Unavailable)
    return {
        str(cls.status): {"$ref": f"#/components/responses/{ERROR_RESPONSES[cls.status][0]}"}
        for cls in classes
    }


def _success(op: Operation, status: int, description: str, refs: dict[Any, Any]) -> Any:
    if status == 204:
        return {"description": description}
    if op.events is not None:
        events = {name: refs[(t, "serialization")] for name, t in op.events.items()}
        stream = {"type": "string", "description": "Server-Sent Events; see `x-sse-events`."}
        return {
            "description": description,
            "headers": SSE_HEADERS,
            "content": {
                EVENT_STREAM: {
                    "schema": stream,
                    "example": SSE_EXAMPLES.get(op.operation_id, ""),
                    "x-sse-events": events,
                }
            },
        }
    if op.response is not None and op.media_type == EVENT_STREAM:
        # The AI SDK's stream: unnamed `data:` events, each one JSON chunk.
        stream = {"type": "string", "description": "Server-Sent Events; see `x-sse-data`."}
        return {
            "description": description,
            "headers": CHAT_HEADERS,
            "content": {
                EVENT_STREAM: {
                    "schema": stream,
                    "example": SSE_EXAMPLES.get(op.operation_id, ""),
                    "x-sse-data": refs[(op.response, "serialization")],
                }
            },
        }
    if op.response is not None:
        schema = refs[(op.response, "serialization")]
    else:
        schema = {"type": "object"} if op.media_type == JSON else {"type": "string"}
    return {"description": description, "content": {op.media_type: {"schema": schema}}}


def _parameters(op: Operation) -> list[dict[str, Any]]:
    found = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": PATH_PARAMS.get(name, name),
            "schema": {"type": "string", "format": "uuid"} if is_uuid else {"type": "string"},
        }
        for name, is_uuid in op.path_params.items()
    ]
    if op.query is not None:
        properties = TypeAdapter(op.query).json_schema(schema_generator=_Generator)["properties"]
        for name, prop in properties.items():
            description = prop.pop("description", name)
            if "default" in prop and prop["default"] is None:
                del prop["default"]
            # A query says "null" by leaving the parameter out.
            schema = next((s for s in prop.get("anyOf", []) if s != {"type": "null"}), prop)
            found.append(
                {"name": name, "in": "query", "description": description, "schema": schema}
            )
    return found + SSE_PARAMETERS.get(op.operation_id, [])


def _operation(op: Operation, refs: dict[Any, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "operationId": op.operation_id,
        "tags": [op.tag],
        "summary": op.summary,
    }
    if op.operation_id in DESCRIPTIONS:
        result["description"] = DESCRIPTIONS[op.operation_id]
    if parameters := _parameters(op):
        result["parameters"] = parameters
    if op.body is not None:
        schema = refs[(op.body, "validation")]
        result["requestBody"] = {
            "required": not body_optional(op.body),
            "content": {JSON: {"schema": schema}},
        }
    if op.auth != "none":
        result["security"] = AUTHENTICATED if op.auth == "required" else [*AUTHENTICATED, {}]
    main = _doc_of(op.response) if op.media_type == JSON else "The stream's events."
    responses = {str(op.status): _success(op, op.status, main, refs)}
    for status, description in op.responses.items():
        responses[str(status)] = _success(op, status, description, refs)
    result["responses"] = dict(sorted({**responses, **_errors(op)}.items()))
    return result


def _doc_of(declared: Any) -> str:
    return (declared.__doc__ or "The result.").strip().splitlines()[0]


FRAME_POSITION = {
    "type": "string",
    "description": "The answer's position after this frame (as in the SSE `id:` of the same "
    "event): a bare offset, or `<content>.<reasoning>.<tools>`; `subscribe` takes it as "
    "`offset` to resume that answer.",
}


def _frame_fields(name: str) -> dict[str, Any]:
    """A server frame's fields besides the event's data: `type`, and `position` if it has one."""
    fields: dict[str, Any] = {"type": {"const": name}}
    if name in event_schemas.CONVERSATION_EVENTS and name not in ("status", "branch"):
        fields["position"] = FRAME_POSITION
    return {"properties": fields}


def _websocket(refs: dict[Any, Any]) -> dict[str, Any]:
    """GET /api/ws: served by `ws.py` with simple-websocket, outside `declare.route`."""
    events = {**event_schemas.CONVERSATION_EVENTS, **event_schemas.PROJECT_EVENTS}
    server = {
        name: {"allOf": [refs[(t, "serialization")], _frame_fields(name)]}
        for name, t in events.items()
    }
    server |= {name: refs[(t, "serialization")] for name, t in event_schemas.SERVER_FRAMES.items()}
    client = {name: refs[(t, "validation")] for name, t in event_schemas.CLIENT_FRAMES.items()}
    return {
        "operationId": "websocket",
        "tags": ["ws"],
        "summary": "WebSocket transport",
        "description": WEBSOCKET_DESCRIPTION,
        "security": [*AUTHENTICATED, {}],
        "responses": {
            "101": {"description": "Switching Protocols: the WebSocket is open."},
            "400": {"$ref": "#/components/responses/BadRequest"},
        },
        "x-websocket-frames": {"client": client, "server": dict(sorted(server.items()))},
    }


def _page() -> dict[str, Any]:
    """GET /c/{conversation_id}: an HTML page (`pages.py`), documented for completeness."""
    return {
        "operationId": "conversation_page",
        "tags": ["pages"],
        "summary": "The conversation page for browsers",
        "parameters": [
            {
                "name": "conversation_id",
                "in": "path",
                "required": True,
                "description": (
                    "The conversation to show. Any value is accepted before signing in (the "
                    "page asks for a token first); once signed in, one that is not a visible "
                    "conversation's id is the 404 page."
                ),
                "schema": {"type": "string"},
            }
        ],
        "responses": {
            "200": {
                "description": PAGE_DESCRIPTION,
                "content": {"text/html": {"schema": {"type": "string"}}},
            },
            "404": {
                "description": "No such conversation, or not visible to the caller.",
                "content": {"text/html": {"schema": {"type": "string"}}},
            },
        },
    }


@cache
def document() -> dict[str, Any]:
    """The whole OpenAPI document (built once, after every route has been declared)."""
    refs, components = _components(_declared_types(OPERATIONS))
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, refs)
    paths["/api/ws"] = {"get": _websocket(refs)}
    paths["/c/{conversation_id}"] = {"get": _page()}
    tags = dict.fromkeys(op["tags"][0] for item in paths.values() for op in item.values())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "chatsvc",
            "version": "0.1.0",
            "summary": "Chat backend that streams LLM answers over Server-Sent Events.",
            "description": doc("""
                JSON in and out (`Content-Type: application/json`), UUID ids, ISO-8601 UTC
                timestamps. A single resource is returned as the object itself, a list as
                `{"items": [...]}`. Every error has the body `Error`; an unsupported method
                on a known path is 405 `method_not_allowed`. Every `/api` route except
                `POST /api/session` needs a bearer token or the session cookie. Each tag is
                the module that serves its routes (`chatsvc/web/api/<tag>.py`).
            """),
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": tag} for tag in tags],
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": {
                name: {
                    "description": description,
                    "content": {JSON: {"schema": _ref("Error")}},
                    **({"headers": ERROR_HEADERS[status]} if status in ERROR_HEADERS else {}),
                }
                for status, (name, description) in ERROR_RESPONSES.items()
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token from `chatsvc users create`.",
                },
                "cookieAuth": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": COOKIE,
                    "description": "The browser session from `POST /api/session`.",
                },
            },
        },
    }
