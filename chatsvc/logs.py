"""How every chatsvc process logs: readable text, or one JSON object per line.

`CHATSVC_LOG_FORMAT` picks the format of the root logger's one handler (to
stderr), through which everything goes: chatsvc's own loggers, gunicorn's error
and access logs (`logconfig_dict`, in the master and in every worker), litellm,
yoyo and Python's warnings. A line written while a request is handled carries
its `request_id`, one written by an answer's greenlet its `message_id`: both
are context variables, which gevent keeps per greenlet, added to each record
by `ContextFilter` (an explicit `extra={"message_id": ...}` wins).
"""

from __future__ import annotations

import logging
import logging.config
import re
import secrets
import sys
from contextvars import ContextVar
from types import TracebackType
from typing import Any

from pythonjsonlogger.json import JsonFormatter

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
MESSAGE_ID: ContextVar[str | None] = ContextVar("message_id", default=None)
CONTEXT_FIELDS = ("request_id", "message_id")

# A client's X-Request-ID is kept when it is 1-128 visible ASCII characters
# without spaces or quotes (what tracing systems send); anything else is
# replaced, so that no client can break a log line or a header with it.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")

TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
# Loggers whose INFO lines are noise at a service's level.
QUIET = ("yoyo", "LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx", "httpcore")


def request_id(sent: str | None) -> str:
    """The request id of a request: the client's X-Request-ID when acceptable, else a new one."""
    if sent is not None and _REQUEST_ID.fullmatch(sent):
        return sent
    return secrets.token_hex(16)


class ContextFilter(logging.Filter):
    """Adds the request and message ids of the current greenlet to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keeps the record; sets `request_id` and `message_id` unless given."""
        for name, var in (("request_id", REQUEST_ID), ("message_id", MESSAGE_ID)):
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


class TextFormatter(logging.Formatter):
    """A readable line, followed by the record's ids when it has any."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        """The line, with ` [request_id=… message_id=…]` when the record has them."""
        line = super().format(record)
        ids = " ".join(
            f"{name}={value}"
            for name in CONTEXT_FIELDS
            if (value := getattr(record, name, None)) is not None
        )
        if not ids:
            return line
        first, newline, rest = line.partition("\n")  # after the message, before a traceback
        return f"{first} [{ids}]{newline}{rest}"


class JsonLineFormatter(JsonFormatter):
    """One JSON object per record: time, level, logger, process, message, ids, traceback."""

    def __init__(self) -> None:
        super().__init__(
            ["asctime", "levelname", "name", "process", "message"],
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        """The fields of a record, leaving out ids it does not have."""
        super().add_fields(log_data, record, message_dict)
        for name in CONTEXT_FIELDS:
            if log_data.get(name, "") is None:
                del log_data[name]


def config(log_format: str) -> dict[str, Any]:
    """The `logging.config.dictConfig` of a process (gunicorn's `logconfig_dict` too)."""
    formatter = "json" if log_format == "json" else "text"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {
            "text": {"()": TextFormatter},
            "json": {"()": JsonLineFormatter},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": formatter,
                "filters": ["context"],
            }
        },
        "root": {"level": "INFO", "handlers": ["stderr"]},
        # gunicorn's loggers go through the root handler like everything else.
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
            **{name: {"level": "WARNING"} for name in QUIET},
        },
    }


def configure(log_format: str) -> None:
    """Set up this process's logging (a process gunicorn does not configure yet): its
    warnings and an uncaught exception become log lines too."""
    logging.config.dictConfig(config(log_format))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    logging.getLogger("chatsvc").critical("uncaught %s", kind.__name__, exc_info=(kind, value, tb))
