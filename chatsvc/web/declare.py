"""A route written in one place: the Flask view, its typed request and its OpenAPI operation.

    @route(bp, "POST", "/projects", body=CreateProject, response=Project, status=201)
    def create_project(body: CreateProject) -> projects.Project: ...

registers the view, hands it the validated body (and query) as typed objects,
serialises what it returns through the response type, and records an
`Operation` from which `chatsvc.web.openapi` builds the description.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, wraps
from typing import Any, Literal, TypeVar

from flask import Blueprint, Response, jsonify, request
from pydantic import TypeAdapter

from chatsvc.errors import ApiError, UnsupportedMediaType
from chatsvc.web import parsing
from chatsvc.web.context import runtime
from chatsvc.web.parsing import Request

# required: 401 without credentials; optional: credentials are read if sent; none: never.
Auth = Literal["required", "optional", "none"]
View = TypeVar("View", bound=Callable[..., Any])


@dataclass(frozen=True)
class Operation:
    """Everything the OpenAPI description says about one route, as it was declared."""

    method: str
    path: str
    operation_id: str
    tag: str
    summary: str
    path_params: dict[str, bool]  # name → whether it is a UUID
    body: type[Request] | None
    query: type[Request] | None
    response: Any
    status: int
    responses: dict[int, str]
    errors: tuple[type[ApiError], ...]
    auth: Auth
    events: dict[str, Any] | None = None
    media_type: str = "application/json"


OPERATIONS: list[Operation] = []
_PUBLIC: set[str] = set()


def route(
    bp: Blueprint,
    method: str,
    rule: str,
    *,
    body: type[Request] | None = None,
    query: type[Request] | None = None,
    response: Any = None,
    status: int = 200,
    responses: dict[int, str] | None = None,
    errors: tuple[type[ApiError], ...] = (),
    auth: Auth = "required",
    events: dict[str, Any] | None = None,
    media_type: str = "application/json",
) -> Callable[[View], View]:
    """Register a view on `bp` and record its operation (see the module docstring)."""

    def register(view: View) -> View:
        op = Operation(
            method=method.lower(),
            path=_openapi_path((bp.url_prefix or "") + rule),
            operation_id=view.__name__,
            tag=view.__module__.rsplit(".", 1)[-1],
            summary=(view.__doc__ or view.__name__).strip().splitlines()[0].rstrip("."),
            path_params={name: conv == "uuid" for conv, name in _PARAM.findall(rule)},
            body=body,
            query=query,
            response=response,
            status=status,
            responses=responses or {},
            errors=errors,
            auth=auth,
            events=events,
            media_type=media_type,
        )

        @wraps(view)
        def handle(**path_args: Any) -> Response:
            if body is not None:
                path_args["body"] = parse_body(body)
            if query is not None:
                path_args["query"] = parse_query(query)
            return _respond(op, view(**path_args))

        bp.add_url_rule(rule, endpoint=view.__name__, view_func=handle, methods=[method])
        if auth != "required":
            _PUBLIC.add(f"{bp.name}.{view.__name__}")
        OPERATIONS.append(op)
        return view

    return register


def requires_auth(endpoint: str | None) -> bool:
    """Whether the route at `endpoint` answers 401 without credentials."""
    return endpoint not in _PUBLIC


def body_optional(model: type[Request]) -> bool:
    """Whether a request may leave the body out: none of its fields is required."""
    return not any(field.is_required() for field in model.model_fields.values())


def parse_body(model: type[parsing.M]) -> parsing.M:
    """The request's JSON body as `model`; 415, 400, 413 or 422 otherwise. A body whose
    fields are all optional may be left out (no body at all: every field takes its default)."""
    if not request.content_length and body_optional(model):
        raw = request.get_data(cache=False)
        if not raw:
            return parsing.parse(model, {}, runtime().settings)
    else:
        raw = None
    if request.mimetype != "application/json":
        raise UnsupportedMediaType()
    data = parsing.parse_json(request.get_data(cache=False) if raw is None else raw)
    return parsing.parse(model, data, runtime().settings)


def parse_query(model: type[parsing.M]) -> parsing.M:
    """The request's query parameters as `model`; 400 otherwise."""
    return parsing.parse(model, request.args.to_dict())


def _respond(op: Operation, result: Any) -> Response:
    if isinstance(result, Response):
        return result
    status = op.status
    if isinstance(result, tuple):
        result, status = result
    if result is None:
        return Response(status=status)
    response = jsonify(serialise(op.response, result))
    response.status_code = status
    return response


def serialise(declared: Any, value: Any) -> Any:
    """`value` (a row or a model) as the declared type's JSON-ready dict."""
    adapter = _adapter(declared)
    return adapter.dump_python(adapter.validate_python(value, from_attributes=True))


@cache
def _adapter(declared: Any) -> TypeAdapter[Any]:
    return TypeAdapter(declared)


_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")


def _openapi_path(rule: str) -> str:
    """`/api/messages/<uuid:message_id>` → `/api/messages/{message_id}`."""
    return _PARAM.sub(r"{\2}", rule)
