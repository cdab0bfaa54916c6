"""chatsvc's exceptions, and the one place driver errors are translated into them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import PoolTimeout


class ChatsvcError(Exception):
    """Something went wrong in chatsvc."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        """The human sentence describing the error."""
        return str(self.args[0])


class ApiError(ChatsvcError):
    """The request could not be served."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "invalid_request"
    headers: ClassVar[dict[str, str]] = {}

    def body(self) -> dict[str, Any]:
        """The error body every route uses: {"error": {"code", "message"}}."""
        return {"error": {"code": self.code, "message": self.message}}


class InvalidJson(ApiError):
    """The request body is not valid JSON."""

    code = "invalid_json"


class InvalidRequest(ApiError):
    """The request is not valid."""


class Unauthorized(ApiError):
    """Authentication is required: send 'Authorization: Bearer <token>' or a session cookie."""

    status = 401
    code = "unauthorized"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="chatsvc"'}


class NotFound(ApiError):
    """No such resource."""

    status = 404
    code = "not_found"


class MethodNotAllowed(ApiError):
    """This method is not allowed on this path."""

    status = 405
    code = "method_not_allowed"


class StreamActive(ApiError):
    """An answer is still streaming in this conversation; wait for it or cancel it."""

    status = 409
    code = "stream_active"


class TooLarge(ApiError):
    """The request is too large."""

    status = 413
    code = "too_large"


class UnsupportedMediaType(ApiError):
    """The request body must be JSON, sent with 'Content-Type: application/json'."""

    status = 415
    code = "unsupported_media_type"


class ValidationError(ApiError):
    """The request body does not have the expected fields."""

    status = 422
    code = "validation_error"


class UnknownModel(ApiError):
    """This model is not one a client may choose here; GET /api/models lists those."""

    status = 422
    code = "unknown_model"


class TokenLimitExceeded(ApiError):
    """This user's token limit is used up."""

    status = 429
    code = "token_limit_exceeded"


class TooManyStreams(ApiError):
    """This user has as many answers streaming as allowed; wait for one to finish."""

    status = 429
    code = "too_many_streams"


class Unavailable(ApiError):
    """The database is unavailable; try again shortly."""

    status = 503
    code = "unavailable"
    headers: ClassVar[dict[str, str]] = {"Retry-After": "1"}


class Fenced(ChatsvcError):
    """This process no longer owns the stream: another took it over or it ended."""


@contextmanager
def wrap_exceptions() -> Iterator[None]:
    """Translate driver errors that mean 'the database is not there' into Unavailable."""
    try:
        yield
    # Both are OperationalErrors too: they go first, or they would read as "unavailable".
    except PoolTimeout as exc:
        raise Unavailable("The service is too busy to reach the database; try again.") from exc
    except psycopg.errors.QueryCanceled as exc:
        raise Unavailable("The database did not answer in time; try again shortly.") from exc
    except (psycopg.OperationalError, pg_errors.AdminShutdown, pg_errors.CannotConnectNow) as exc:
        raise Unavailable() from exc


def unique_violation_of(exc: BaseException, constraint: str) -> bool:
    """Whether exc is a unique violation of the named index or constraint."""
    return isinstance(exc, pg_errors.UniqueViolation) and exc.diag.constraint_name == constraint
