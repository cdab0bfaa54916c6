"""The Flask application factory."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from chatsvc import jsonio
from chatsvc.config import Settings
from chatsvc.engine.runtime import Runtime
from chatsvc.errors import (
    ApiError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    TooLarge,
    Unavailable,
)
from chatsvc.web import api, health, observe, pages, ws

log = logging.getLogger(__name__)


class JSONProvider(DefaultJSONProvider):
    """ISO-8601 UTC timestamps and UUID strings, UTF-8 as is."""

    ensure_ascii = False
    sort_keys = False
    default = staticmethod(jsonio.default)


def create_app(settings: Settings | None = None, *, database_url: str | None = None) -> Flask:
    """Build the app: settings, the per-process runtime, error handlers, blueprints."""
    settings = settings or Settings.from_env()
    url = database_url or settings.database_url
    if url is None:
        raise RuntimeError("create_app needs a database URL (chatsvc serve provides one)")
    app = Flask(__name__)
    app.json = JSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["chatsvc"] = Runtime(settings, url)
    register_error_handlers(app)
    observe.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(pages.bp)
    ws.init_app(app)
    app.extensions["chatsvc"].start()
    return app


def _error_response(error: ApiError) -> Response:
    response = jsonify(error.body())
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def register_error_handlers(app: Flask) -> None:
    """Every failure leaves with the error body of docs/api.md."""

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        return _error_response(error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        translated: ApiError
        if error.code == 404:
            translated = NotFound("No such resource.")
        elif error.code == 405:
            translated = MethodNotAllowed(f"{error.description}")
        elif error.code == 413:
            translated = TooLarge("The request body is too large.")
        elif error.code is not None and 400 <= error.code < 500:
            translated = InvalidRequest(error.description or "The request is not valid.")
        else:
            translated = Unavailable()
        response = _error_response(translated)
        if error.code == 405:
            allowed: Any = getattr(error, "valid_methods", None) or []
            response.status_code = 405
            response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error")
        response = jsonify(
            {"error": {"code": "internal_error", "message": "Something went wrong on our side."}}
        )
        response.status_code = 500
        return response
