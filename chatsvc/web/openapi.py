"""The OpenAPI 3.1 description of the HTTP API (served at /openapi.json).

`SPEC` is built once, at import, from small helpers so that the repeated parts
(error responses, authentication, path parameters, JSON bodies) are written once.
It describes the API as implemented in `chatsvc.api` and `chatsvc.health`, plus
the routes SPEC.md lists that other modules serve (the project room, the
WebSocket and the conversation page).
"""

from __future__ import annotations

from textwrap import dedent
from typing import Any

from chatsvc.config import Settings

JSON = "application/json"
EVENT_STREAM = "text/event-stream"
SESSION_COOKIE = "chatsvc_session"  # chatsvc.auth.COOKIE, without importing the request layer

Schema = dict[str, Any]

MAX_MESSAGE_CHARS: int = Settings.max_message_chars
MESSAGE_STATUSES = ["streaming", "completed", "cancelled", "failed", "interrupted"]
AUTHENTICATED: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"cookieAuth": []}]


def doc(text: str) -> str:
    """A triple-quoted description, dedented and stripped."""
    return dedent(text).strip()


# --- schema helpers ---------------------------------------------------------------


def ref(name: str) -> Schema:
    """A reference to a schema in components/schemas."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """The schema, or JSON null (OpenAPI 3.1 style)."""
    if "type" in schema and "$ref" not in schema:
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def uuid(description: str | None = None) -> Schema:
    """A UUID string."""
    return described({"type": "string", "format": "uuid"}, description)


def timestamp(description: str | None = None) -> Schema:
    """An ISO-8601 UTC timestamp string."""
    return described({"type": "string", "format": "date-time"}, description)


def string(
    min_length: int | None = None, max_length: int | None = None, description: str | None = None
) -> Schema:
    """A string, optionally bounded in length (Unicode code points)."""
    schema: Schema = {"type": "string"}
    if min_length is not None:
        schema["minLength"] = min_length
    if max_length is not None:
        schema["maxLength"] = max_length
    return described(schema, description)


def integer(description: str | None = None, minimum: int | None = 0) -> Schema:
    """An integer, non-negative unless told otherwise."""
    schema: Schema = {"type": "integer"}
    if minimum is not None:
        schema["minimum"] = minimum
    return described(schema, description)


def described(schema: Schema, description: str | None) -> Schema:
    """The schema with a description, when there is one."""
    return {**schema, "description": description} if description else schema


def obj(
    properties: dict[str, Schema],
    *,
    required: list[str] | None = None,
    closed: bool = False,
    description: str | None = None,
) -> Schema:
    """An object schema; every property is required unless `required` says otherwise."""
    schema: Schema = {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }
    if closed:
        schema["additionalProperties"] = False
    return described(schema, description)


def items_of(name: str, description: str) -> Schema:
    """A list body: `{"items": [...]}`."""
    return obj({"items": {"type": "array", "items": ref(name)}}, description=description)


# --- components -------------------------------------------------------------------

MESSAGE_USAGE = obj(
    {
        "prompt_tokens": integer(),
        "completion_tokens": integer(),
        "estimated": {
            "type": "boolean",
            "description": "True when the provider reported no usage and it was estimated.",
        },
    },
    required=["prompt_tokens", "completion_tokens"],
    description="Tokens one answer used (across every LLM call made for it, resumes included).",
)

MESSAGE = obj(
    {
        "id": uuid(),
        "conversation_id": uuid(),
        "role": {"type": "string", "enum": ["user", "assistant"]},
        "status": ref("MessageStatus"),
        "content": string(
            description=(
                "The whole text of a finished message; while streaming, the checkpointed "
                "text so far."
            )
        ),
        "content_length": integer("Length of `content` in Unicode code points."),
        "epoch": integer("Ownership generation; incremented at each takeover."),
        "model": nullable(string(description="An answer's LLM model; null for user messages.")),
        "usage": nullable(ref("MessageUsage")),
        "error": nullable(string(description="Why an answer failed or was interrupted.")),
        "created_at": timestamp(),
        "completed_at": nullable(timestamp("When the message reached a terminal status.")),
        "client_message_id": nullable(string(1, 200)),
        "reply_to": nullable(uuid("For an answer: the user message it answers.")),
        "user_id": nullable(uuid("The user who sent the message (or asked for the answer).")),
    },
    description="A message as the database has it, with its true status and content.",
)

MESSAGE_STATUS: Schema = {
    "type": "string",
    "enum": MESSAGE_STATUSES,
    "description": "`streaming` is the only non-terminal status; a terminal message never changes.",
}

CONVERSATION = obj(
    {
        "id": uuid(),
        "user_id": uuid("The creator."),
        "project_id": nullable(uuid("Null for a conversation private to its creator.")),
        "title": string(0, 200),
        "created_at": timestamp(),
        "is_streaming": {"type": "boolean"},
        "active_message_id": nullable(uuid("The answer streaming now, if any.")),
    },
)

CONVERSATION_WITH_MESSAGES: Schema = {
    "allOf": [
        ref("Conversation"),
        obj(
            {
                "messages": {
                    "type": "array",
                    "items": ref("Message"),
                    "description": "Every message, in order.",
                }
            }
        ),
    ],
}

CONVERSATION_PAGE = obj(
    {
        "items": {"type": "array", "items": ref("Conversation")},
        "next_before": nullable(
            uuid("Pass as `before` for the next page; null when this page was not full.")
        ),
    },
    description="Conversations, newest first.",
)

CONVERSATION_STATUS = obj(
    {
        "conversation_id": uuid(),
        "is_streaming": {"type": "boolean"},
        "active_message_id": nullable(uuid("The answer streaming now, if any.")),
        "message_id": nullable(uuid("The latest answer, streaming or not.")),
        "status": nullable({"type": "string", "enum": MESSAGE_STATUSES}),
        "content_length": integer("Committed length of the latest answer (0 without one)."),
        "epoch": nullable(integer()),
        "started_at": nullable(timestamp()),
        "last_checkpoint_at": nullable(timestamp()),
        "lease_expires_at": nullable(timestamp()),
    },
    description="Whether a conversation is streaming, and the state of its latest answer.",
)

PROJECT = obj(
    {
        "id": uuid(),
        "name": string(1, 200),
        "created_by": uuid(),
        "created_at": timestamp(),
        "members": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Member user names, in the order they joined.",
        },
    },
    description="A shared space: its conversations are visible to every member.",
)

USER = obj(
    {
        "id": uuid(),
        "name": string(1, 64),
        "is_admin": {"type": "boolean"},
        "token_limit": nullable(integer("Null when unlimited.")),
        "created_at": timestamp(),
    },
)

USAGE = obj(
    {
        "prompt_tokens": integer(),
        "completion_tokens": integer(),
        "total_tokens": integer("Compared with `token_limit`."),
        "token_limit": nullable(integer("Null when unlimited.")),
    },
    description="Tokens the caller has used, and their limit.",
)

ACTIVE_STREAM = obj(
    {
        "message_id": uuid(),
        "conversation_id": uuid(),
        "owner": nullable(string(description="The process generating the answer.")),
        "epoch": integer(),
        "started_at": timestamp(),
        "last_checkpoint_at": nullable(timestamp()),
        "lease_expires_at": nullable(timestamp()),
        "content_length": integer("Characters committed so far."),
        "age_s": {"type": "number", "description": "Seconds since the answer started."},
        "cancel_requested": {"type": "boolean"},
        "resume_count": integer("Takeovers so far."),
        "model": nullable(string()),
    },
    description="One answer streaming now (a row of the `active_streams` view).",
)

EXCHANGE = obj(
    {
        "user_message": ref("Message"),
        "assistant_message": ref("Message"),
        "stream_url": string(description="`/api/messages/{assistant_message.id}/stream`."),
    },
    description="A user message and the streaming answer it asked for.",
)

ERROR = obj(
    {
        "error": obj(
            {
                "code": {
                    "type": "string",
                    "pattern": "^[a-z][a-z0-9_]*$",
                    "description": doc("""
                        One of `invalid_json`, `invalid_request`, `unauthorized`, `not_found`,
                        `method_not_allowed`, `stream_active`, `conflict`, `too_large`,
                        `unsupported_media_type`, `validation_error`, `token_limit_exceeded`,
                        `unavailable`, `internal_error`.
                    """),
                },
                "message": string(1, description="A human sentence."),
            },
        ),
    },
    description="Every error response has this body.",
)

DELTA_EVENT = obj(
    {
        "message_id": uuid(),
        "offset": integer("Start offset of `text` in the message content (code points)."),
        "text": string(1),
    },
    description="`event: delta` — committed text; `id:` is the offset after it.",
)

STATUS_EVENT = obj(
    {
        "message_id": uuid(),
        "status": ref("MessageStatus"),
        "epoch": integer(),
        "resumed": {"type": "boolean"},
    },
    description="`event: status` — the stream was taken over after a crash or restart (no `id:`).",
)

DONE_EVENT = obj(
    {
        "message_id": uuid(),
        "status": ref("MessageStatus"),
        "content_length": integer("The final length; also the event's `id:` offset."),
        "usage": ref("MessageUsage"),
        "error": string(description="Present when the answer failed or was interrupted."),
    },
    required=["message_id", "status", "content_length", "usage"],
    description="`event: done` — the answer ended; the last event of a message stream.",
)

PROJECT_EVENT = obj(
    {
        "project_id": uuid(),
        "conversation_id": uuid(),
        "message_id": uuid("For `stream.started` and `stream.finished`."),
        "status": described(ref("MessageStatus"), "For `stream.finished`: how the answer ended."),
        "content_length": {"type": "integer", "description": "For `stream.finished`."},
        "user_id": uuid("For `conversation.created` and `stream.started`: who did it."),
        "title": {"type": "string", "description": "For `conversation.created`."},
        "created_at": {
            "type": "string",
            "format": "date-time",
            "description": "For `conversation.created`.",
        },
    },
    required=["project_id", "conversation_id"],
    description="The data of a project-room event.",
)

SCHEMAS: dict[str, Schema] = {
    "Message": MESSAGE,
    "MessageStatus": MESSAGE_STATUS,
    "MessageUsage": MESSAGE_USAGE,
    "Conversation": CONVERSATION,
    "ConversationWithMessages": CONVERSATION_WITH_MESSAGES,
    "ConversationPage": CONVERSATION_PAGE,
    "ConversationStatus": CONVERSATION_STATUS,
    "Project": PROJECT,
    "ProjectList": items_of("Project", "Projects the caller belongs to, newest first."),
    "User": USER,
    "Usage": USAGE,
    "ActiveStream": ACTIVE_STREAM,
    "ActiveStreamList": items_of("ActiveStream", "Active streams, oldest first."),
    "Exchange": EXCHANGE,
    "Error": ERROR,
    "DeltaEvent": DELTA_EVENT,
    "StatusEvent": STATUS_EVENT,
    "DoneEvent": DONE_EVENT,
    "ProjectEvent": PROJECT_EVENT,
}


# --- responses ----------------------------------------------------------------------


def header(description: str, schema: Schema | None = None) -> dict[str, Any]:
    """A response header."""
    return {"description": description, "schema": schema or {"type": "string"}}


def json_response(
    description: str, schema: Schema, headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A response with a JSON body."""
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def no_content(description: str) -> dict[str, Any]:
    """A 204-style response without a body."""
    return {"description": description}


def error_response(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """An error response with the `Error` body."""
    return json_response(description, ref("Error"), headers)


def error_ref(name: str) -> dict[str, str]:
    """A reference to a shared error response in components/responses."""
    return {"$ref": f"#/components/responses/{name}"}


ERROR_RESPONSES: dict[str, dict[str, Any]] = {
    "BadRequest": error_response(
        "`invalid_json` (the body is not JSON) or `invalid_request` (a bad query parameter, "
        "offset or Last-Event-ID)."
    ),
    "Unauthorized": error_response(
        "`unauthorized`: no valid bearer token or session cookie.",
        {"WWW-Authenticate": header('`Bearer realm="chatsvc"`')},
    ),
    "NotFound": error_response(
        "`not_found`: no such resource, or one the caller may not see (never 403)."
    ),
    "StreamActive": error_response(
        "`stream_active`: an answer is still streaming in this conversation."
    ),
    "TooLarge": error_response(
        f"`too_large`: the body is over the limit, or `content` is longer than "
        f"CHATSVC_MAX_MESSAGE_CHARS (default {MAX_MESSAGE_CHARS})."
    ),
    "UnsupportedMediaType": error_response(
        "`unsupported_media_type`: the body must be sent as `application/json`."
    ),
    "ValidationError": error_response(
        "`validation_error`: not a JSON object, a missing or unknown field, or a bad value."
    ),
    "TokenLimitExceeded": error_response(
        "`token_limit_exceeded`: the caller's token limit is used up."
    ),
    "Unavailable": error_response(
        "`unavailable`: the database cannot be reached, or this server is shutting down.",
        {"Retry-After": header("Seconds to wait before retrying.", {"type": "integer"})},
    ),
}

STATUS_OF_ERROR = {
    "BadRequest": "400",
    "Unauthorized": "401",
    "NotFound": "404",
    "StreamActive": "409",
    "TooLarge": "413",
    "UnsupportedMediaType": "415",
    "ValidationError": "422",
    "TokenLimitExceeded": "429",
    "Unavailable": "503",
}

BODY_ERRORS = ("BadRequest", "TooLarge", "UnsupportedMediaType", "ValidationError")


def errors(*names: str) -> dict[str, Any]:
    """Shared error responses by name, keyed by their status code."""
    return {STATUS_OF_ERROR[name]: error_ref(name) for name in names}


SSE_HEADERS = {
    "Cache-Control": header("`no-cache`."),
    "X-Accel-Buffering": header("`no`, so proxies do not buffer the stream."),
}


def sse_response(description: str, events: dict[str, Schema], example: str) -> dict[str, Any]:
    """A `text/event-stream` response; `events` maps event names to their `data:` schemas."""
    return {
        "description": description,
        "headers": SSE_HEADERS,
        "content": {
            EVENT_STREAM: {
                "schema": {"type": "string", "description": "A stream of Server-Sent Events."},
                "example": example,
                "x-sse-events": events,
            },
        },
    }


# --- descriptions of the streaming endpoints ---------------------------------------

PROJECT_EVENTS = (
    "conversation.created",
    "conversation.deleted",
    "stream.started",
    "stream.finished",
)

PROJECT_EVENTS_DESCRIPTION = doc("""
    A long-lived Server-Sent Events stream for a page showing a project. Events (`data:` is
    JSON with at least `project_id` and `conversation_id`):

    - `conversation.created` — a conversation was created in the project;
    - `conversation.deleted` — one was deleted;
    - `stream.started` — an answer started streaming (`message_id`);
    - `stream.finished` — an answer ended (`message_id`, `status`).

    The stream starts with `retry: 1000` and sends `: ping` comments at least every
    CHATSVC_HEARTBEAT_S seconds when idle.
""")

PROJECT_EVENTS_EXAMPLE = (
    "retry: 1000\n\n"
    "event: stream.started\n"
    'data: {"project_id":"…","conversation_id":"…","message_id":"…"}\n\n'
)


LAST_EVENT_ID_HEADER = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "The `id:` of the last event received; browsers send it on reconnect.",
    "schema": {"type": "string"},
}

SSE_COMMON = doc("""
    The stream starts with `retry: 1000`; `: ping` comments go out at least every
    CHATSVC_HEARTBEAT_S seconds (default 15) when nothing else does. Only committed text is
    ever sent, and the deltas of a message concatenate, in offset order, to its final content
    with no gap and no overlap across any number of reconnects. Offsets count Unicode code
    points.
""")

MESSAGE_STREAM_DESCRIPTION = (
    doc("""
    One answer from an offset to `done`. The offset is the `Last-Event-ID` header, else
    `?offset=`, else 0. The server first sends, as one `delta`, everything committed after
    the offset (nothing if there is none), then live deltas, then `done`, and closes.

    | event | `id:` | `data:` |
    |---|---|---|
    | `delta` | offset after this delta | `DeltaEvent` |
    | `status` | — | `StatusEvent`, when the stream was taken over after a crash or restart |
    | `done` | final content length | `DoneEvent` |

    204 when the message has finished and the offset equals its length (so `EventSource`
    stops reconnecting); 400 when the offset is not a non-negative integer or is beyond the
    committed content.
""")
    + "\n\n"
    + SSE_COMMON
)

CONVERSATION_STREAM_DESCRIPTION = (
    doc("""
    For a page that stays open on a conversation. Events: `message` (a new message, user or
    assistant, as a `Message`), and `delta`, `status`, `done` as on the message stream, each
    with `message_id`. The `id:` of `message`, `delta` and `done` is
    `<message_id>:<offset>`, so a reconnect with `Last-Event-ID` resumes the right answer at
    the right place and then follows later messages (without it, every message is replayed).
    400 when Last-Event-ID is not of that form, its offset is beyond the committed content,
    or `?offset=` is given (this stream resumes from Last-Event-ID only).
""")
    + "\n\n"
    + SSE_COMMON
)

MESSAGE_STREAM_EXAMPLE = (
    "retry: 1000\n\n"
    "event: delta\nid: 12\n"
    'data: {"message_id":"…","offset":0,"text":"Hello there!"}\n\n'
    "event: done\nid: 12\n"
    'data: {"message_id":"…","status":"completed","content_length":12,'
    '"usage":{"prompt_tokens":9,"completion_tokens":3}}\n\n'
)

CONVERSATION_STREAM_EXAMPLE = (
    "retry: 1000\n\n"
    "event: message\nid: 3f2c…:0\n"
    'data: {"id":"3f2c…","role":"assistant","status":"streaming","content":"",…}\n\n'
    "event: delta\nid: 3f2c…:5\n"
    'data: {"message_id":"3f2c…","offset":0,"text":"Hello"}\n\n'
)


WEBSOCKET_DESCRIPTION = doc("""
    Upgrade to a WebSocket carrying the same operations as JSON frames with a `type`.

    Client → server: `auth` `{token}`, `subscribe` `{conversation_id, message_id?, offset?}`,
    `send` `{conversation_id, content, model?, client_message_id?}`, `cancel`
    `{conversation_id}`, `join_project` `{project_id}`.

    Server → client: `message`, `delta`, `status`, `done`, `error`, and the project events
    (`conversation.created`, `conversation.deleted`, `stream.started`, `stream.finished`),
    with the same fields and offset rules as the Server-Sent Events plus `type`. `done` also
    reports `tokens_used` (what the answers sent on this connection used), `user_tokens_used`
    and `token_limit`. An `error` frame has `code`, `message` and `request` (the type of the
    frame it answers); the connection stays usable. Successful commands are not acknowledged:
    `send` is answered by the two `message` frames and then the answer's events.

    A connection authenticates with a bearer token or the session cookie on the upgrade
    request, or with an `auth` frame; until then every other frame gets an `unauthorized`
    error. When the server shuts down it closes the socket with code 1012: reconnect and
    subscribe again from the last offset.
""")


# --- operations -------------------------------------------------------------------


def path_param(name: str, description: str, schema: Schema | None = None) -> dict[str, Any]:
    """A required path parameter (a UUID unless told otherwise)."""
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema or uuid(),
    }


def query_param(name: str, description: str, schema: Schema) -> dict[str, Any]:
    """An optional query parameter."""
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def json_body(properties: dict[str, Schema], required: list[str]) -> dict[str, Any]:
    """A required JSON request body with exactly these fields (unknown ones are 422)."""
    schema = obj(properties, required=required, closed=True)
    return {"required": True, "content": {JSON: {"schema": schema}}}


def operation(
    operation_id: str,
    tag: str,
    summary: str,
    responses: dict[str, Any],
    *,
    description: str | None = None,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    authenticated: bool = True,
) -> dict[str, Any]:
    """An operation; authenticated ones get both security schemes and the 401/503 responses."""
    op: dict[str, Any] = {"operationId": operation_id, "tags": [tag], "summary": summary}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
        responses = {**responses, **errors(*BODY_ERRORS)}
    if authenticated:
        op["security"] = AUTHENTICATED
        responses = {**responses, **errors("Unauthorized", "Unavailable")}
    op["responses"] = dict(sorted(responses.items()))
    return op


PROJECT_ID = path_param("project_id", "A project the caller is a member of.")
CONVERSATION_ID = path_param("conversation_id", "A conversation the caller may see.")
MESSAGE_ID = path_param("message_id", "A message in a conversation the caller may see.")
NOT_FOUND_WITH_IDS = "Unknown ids, ids that are not UUIDs and invisible resources are all 404."


def session_paths() -> dict[str, Any]:
    """POST/DELETE /api/session and GET /api/me."""
    session_cookie = header(
        f"`{SESSION_COOKIE}=...; HttpOnly; SameSite=Strict; Path=/` (Secure over HTTPS)."
    )
    return {
        "/api/session": {
            "post": operation(
                "create_session",
                "session",
                "Exchange an API token for a browser session cookie",
                {
                    "201": json_response(
                        "Signed in; the session cookie is set.",
                        obj({"user": ref("User")}),
                        {"Set-Cookie": session_cookie},
                    ),
                    "401": error_ref("Unauthorized"),
                    **errors("Unavailable"),
                },
                description="The only /api route without authentication.",
                body=json_body({"token": string(1, 200)}, ["token"]),
                authenticated=False,
            ),
            "delete": operation(
                "delete_session",
                "session",
                "End the browser session",
                {
                    "204": {
                        "description": "Signed out; the cookie is cleared.",
                        "headers": {"Set-Cookie": header("Expires the session cookie.")},
                    }
                },
            ),
        },
        "/api/me": {
            "get": operation(
                "me",
                "session",
                "The calling user",
                {"200": json_response("The user.", ref("User"))},
            ),
        },
    }


def project_paths() -> dict[str, Any]:
    """Projects and their members."""
    project = json_response("The project.", ref("Project"))
    return {
        "/api/projects": {
            "post": operation(
                "create_project",
                "projects",
                "Create a project (the caller becomes a member)",
                {"201": json_response("Created.", ref("Project"))},
                body=json_body({"name": string(1, 200)}, ["name"]),
            ),
            "get": operation(
                "list_projects",
                "projects",
                "Projects the caller belongs to",
                {"200": json_response("The projects.", ref("ProjectList"))},
            ),
        },
        "/api/projects/{project_id}": {
            "get": operation(
                "get_project",
                "projects",
                "One project the caller belongs to",
                {"200": project, **errors("NotFound")},
                parameters=[PROJECT_ID],
            ),
        },
        "/api/projects/{project_id}/members": {
            "post": operation(
                "add_member",
                "projects",
                "Add a member by user name (any member may)",
                {
                    "201": json_response("Added; the updated project.", ref("Project")),
                    "200": json_response(
                        "Already a member; the project, unchanged.", ref("Project")
                    ),
                    **errors("NotFound"),
                },
                description="404 when the project or the user does not exist.",
                parameters=[PROJECT_ID],
                body=json_body({"user": string(1, 64, "A user name.")}, ["user"]),
            ),
        },
        "/api/projects/{project_id}/members/{name}": {
            "delete": operation(
                "remove_member",
                "projects",
                "Remove a member by user name (themselves included)",
                {"204": no_content("Removed."), **errors("NotFound")},
                description="404 when the project does not exist or the user is not a member.",
                parameters=[PROJECT_ID, path_param("name", "A member's user name.", string(1, 64))],
            ),
        },
        "/api/projects/{project_id}/events": {
            "get": operation(
                "project_events",
                "projects",
                "SSE: the project room",
                {
                    "200": sse_response(
                        "The project's events, until the client disconnects.",
                        {name: ref("ProjectEvent") for name in PROJECT_EVENTS},
                        PROJECT_EVENTS_EXAMPLE,
                    ),
                    **errors("NotFound"),
                },
                description=PROJECT_EVENTS_DESCRIPTION,
                parameters=[PROJECT_ID],
            ),
        },
    }


def conversation_paths() -> dict[str, Any]:
    """Conversations: create, list, read, delete, send, status, cancel."""
    return {
        "/api/conversations": {
            "post": operation(
                "create_conversation",
                "conversations",
                "Create a conversation",
                {"201": json_response("Created.", ref("Conversation")), **errors("NotFound")},
                description=doc("""
                    Without `project_id` it is private to its creator; with one it is visible
                    to every member of the project (404 when the caller is not a member).
                """),
                body=json_body(
                    {"project_id": nullable(uuid()), "title": nullable(string(0, 200))}, []
                ),
            ),
            "get": operation(
                "list_conversations",
                "conversations",
                "Visible conversations, newest first",
                {
                    "200": json_response("A page of conversations.", ref("ConversationPage")),
                    **errors("BadRequest"),
                },
                parameters=[
                    query_param("project_id", "Only this project's conversations.", uuid()),
                    query_param(
                        "limit",
                        "Page size.",
                        {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
                    ),
                    query_param(
                        "before",
                        "Only conversations older than this one "
                        "(the previous page's `next_before`).",
                        uuid(),
                    ),
                ],
            ),
        },
        "/api/conversations/{conversation_id}": {
            "get": operation(
                "get_conversation",
                "conversations",
                "A conversation and its messages in order",
                {
                    "200": json_response(
                        "A streaming answer shows its checkpointed content and "
                        "`status: streaming`.",
                        ref("ConversationWithMessages"),
                    ),
                    **errors("NotFound"),
                },
                description=NOT_FOUND_WITH_IDS,
                parameters=[CONVERSATION_ID],
            ),
            "delete": operation(
                "delete_conversation",
                "conversations",
                "Delete a conversation",
                {
                    "204": no_content("Deleted (its active answer was cancelled first)."),
                    **errors("NotFound"),
                },
                parameters=[CONVERSATION_ID],
            ),
        },
        "/api/conversations/{conversation_id}/messages": {
            "post": operation(
                "send_message",
                "conversations",
                "Send a message and start its answer",
                {
                    "202": json_response("Stored; the answer is streaming.", ref("Exchange")),
                    "200": json_response(
                        "`client_message_id` was already used in this conversation: the same "
                        "pair, and nothing is started.",
                        ref("Exchange"),
                    ),
                    **errors("NotFound", "StreamActive", "TokenLimitExceeded"),
                },
                description=doc("""
                    The user message and the assistant answer (status `streaming`) exist before
                    this returns. Only one answer streams per conversation at a time (409).
                    503 also when this server is shutting down.
                """),
                parameters=[CONVERSATION_ID],
                body=json_body(
                    {
                        "content": string(
                            1,
                            MAX_MESSAGE_CHARS,
                            doc(f"""
                            1 to CHATSVC_MAX_MESSAGE_CHARS (default {MAX_MESSAGE_CHARS})
                            characters; longer is 413. No NUL characters.
                        """),
                        ),
                        "model": nullable(string(1, 200, "A litellm model name.")),
                        "client_message_id": nullable(string(1, 200, "An idempotency key.")),
                    },
                    ["content"],
                ),
            ),
        },
        "/api/conversations/{conversation_id}/status": {
            "get": operation(
                "conversation_status",
                "conversations",
                "Whether the conversation is streaming",
                {
                    "200": json_response("The status.", ref("ConversationStatus")),
                    **errors("NotFound"),
                },
                parameters=[CONVERSATION_ID],
            ),
        },
        "/api/conversations/{conversation_id}/cancel": {
            "post": operation(
                "cancel_conversation",
                "conversations",
                "Cancel the active answer (idempotent)",
                {
                    "202": json_response(
                        "The answer being cancelled, or the latest answer when none is streaming.",
                        ref("Message"),
                    ),
                    **errors("NotFound"),
                },
                description="404 also when the conversation has no answer at all.",
                parameters=[CONVERSATION_ID],
            ),
        },
        "/api/conversations/{conversation_id}/stream": {
            "get": operation(
                "conversation_stream",
                "streams",
                "SSE: the whole conversation, long-lived",
                {
                    "200": sse_response(
                        "Every message and every answer as it grows, until the conversation is "
                        "deleted or the client disconnects.",
                        {
                            "message": ref("Message"),
                            "delta": ref("DeltaEvent"),
                            "status": ref("StatusEvent"),
                            "done": ref("DoneEvent"),
                        },
                        CONVERSATION_STREAM_EXAMPLE,
                    ),
                    **errors("BadRequest", "NotFound"),
                },
                description=CONVERSATION_STREAM_DESCRIPTION,
                parameters=[
                    CONVERSATION_ID,
                    LAST_EVENT_ID_HEADER,
                    query_param(
                        "last_event_id",
                        "Same as the Last-Event-ID header, for a first connection that resumes.",
                        string(),
                    ),
                ],
            ),
        },
    }


def message_paths() -> dict[str, Any]:
    """Single messages: read, cancel, stream."""
    return {
        "/api/messages/{message_id}": {
            "get": operation(
                "get_message",
                "messages",
                "One message with its true status and content",
                {"200": json_response("The message.", ref("Message")), **errors("NotFound")},
                description=NOT_FOUND_WITH_IDS,
                parameters=[MESSAGE_ID],
            ),
        },
        "/api/messages/{message_id}/cancel": {
            "post": operation(
                "cancel_message",
                "messages",
                "Request that an answer stop (idempotent)",
                {
                    "202": json_response(
                        "The message; a streaming answer stops within a checkpoint interval and "
                        "ends `cancelled`. A finished message is returned unchanged.",
                        ref("Message"),
                    ),
                    **errors("NotFound"),
                },
                parameters=[MESSAGE_ID],
            ),
        },
        "/api/messages/{message_id}/stream": {
            "get": operation(
                "message_stream",
                "streams",
                "SSE: one answer from an offset to `done`",
                {
                    "200": sse_response(
                        "Deltas from the requested offset, then `done`.",
                        {
                            "delta": ref("DeltaEvent"),
                            "status": ref("StatusEvent"),
                            "done": ref("DoneEvent"),
                        },
                        MESSAGE_STREAM_EXAMPLE,
                    ),
                    "204": {
                        "description": "The message has finished and was read to its end.",
                        "headers": SSE_HEADERS,
                    },
                    **errors("BadRequest", "NotFound"),
                },
                description=MESSAGE_STREAM_DESCRIPTION,
                parameters=[
                    MESSAGE_ID,
                    LAST_EVENT_ID_HEADER,
                    query_param(
                        "offset", "Where to start when there is no Last-Event-ID.", integer()
                    ),
                ],
            ),
        },
    }


def other_paths() -> dict[str, Any]:
    """Active streams, usage and the WebSocket transport."""
    return {
        "/api/streams": {
            "get": operation(
                "active_streams",
                "streams",
                "Answers streaming now that the caller may see",
                {
                    "200": json_response(
                        "Every active stream for an admin.", ref("ActiveStreamList")
                    )
                },
            ),
        },
        "/api/usage": {
            "get": operation(
                "usage",
                "users",
                "Tokens the caller has used, and their limit",
                {"200": json_response("The usage.", ref("Usage"))},
            ),
        },
        "/api/ws": {
            "get": {
                **operation(
                    "websocket",
                    "streams",
                    "WebSocket transport",
                    {
                        "101": {"description": "Switching Protocols: the WebSocket is open."},
                        **errors("BadRequest"),
                    },
                    description=WEBSOCKET_DESCRIPTION,
                ),
                # The `auth` frame is an alternative to the header or cookie.
                "security": [*AUTHENTICATED, {}],
            },
        },
    }


def service_paths() -> dict[str, Any]:
    """Health, metrics, this description and the conversation page (no authentication)."""
    status = {
        "type": "object",
        "properties": {"status": {"type": "string"}},
        "required": ["status"],
    }
    return {
        "/healthz": {
            "get": operation(
                "healthz",
                "service",
                "Liveness",
                {"200": json_response('The process is alive: `{"status": "ok"}`.', status)},
                authenticated=False,
            ),
        },
        "/readyz": {
            "get": operation(
                "readyz",
                "service",
                "Readiness",
                {
                    "200": json_response(
                        "The database answers, migrations are current and events are received: "
                        '`{"status": "ready"}`.',
                        status,
                    ),
                    **errors("Unavailable"),
                },
                authenticated=False,
            ),
        },
        "/metrics": {
            "get": operation(
                "metrics",
                "service",
                "Prometheus metrics of this process",
                {
                    "200": {
                        "description": "Prometheus text exposition format 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                authenticated=False,
            ),
        },
        "/openapi.json": {
            "get": operation(
                "openapi",
                "service",
                "This OpenAPI description",
                {"200": json_response("OpenAPI 3.1.", {"type": "object"})},
                authenticated=False,
            ),
        },
        "/c/{conversation_id}": {
            "get": operation(
                "conversation_page",
                "pages",
                "The conversation page for browsers",
                {
                    "200": {
                        "description": doc("""
                    The conversation rendered on the server, then following
                    `/api/conversations/{conversation_id}/stream`. Without a session the page
                    asks for a token and exchanges it through `POST /api/session`.
                 """),
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "404": {"description": "No such conversation, or not visible to the caller."},
                },
                parameters=[path_param("conversation_id", "The conversation to show.")],
                authenticated=False,
            ),
        },
    }


def build() -> dict[str, Any]:
    """The whole OpenAPI document."""
    paths: dict[str, Any] = {
        **session_paths(),
        **project_paths(),
        **conversation_paths(),
        **message_paths(),
        **other_paths(),
        **service_paths(),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "chatsvc",
            "version": "0.1.0",
            "summary": "Chat backend that streams LLM answers over Server-Sent Events.",
            "description": doc("""
                JSON in and out (`Content-Type: application/json`), UUID ids, ISO-8601 UTC
                timestamps. A single resource is returned as the object itself, a list as
                `{"items": [...]}`. Every error has the body
                `{"error": {"code": "<snake_case>", "message": "<human sentence>"}}`; an
                unsupported method on a known path is 405 `method_not_allowed`.
                Every `/api` route except `POST /api/session` needs a bearer token or the
                session cookie.
            """),
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": name}
            for name in (
                "session",
                "projects",
                "conversations",
                "messages",
                "streams",
                "users",
                "service",
                "pages",
            )
        ],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": ERROR_RESPONSES,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token from `chatsvc users create`.",
                },
                "cookieAuth": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": SESSION_COOKIE,
                    "description": "The browser session from `POST /api/session`.",
                },
            },
        },
    }


SPEC: dict[str, Any] = build()
