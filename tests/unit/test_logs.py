"""Log lines: request ids, the ids on every line, the JSON and text formats."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator

import gevent
import pytest

from chatsvc import logs


@pytest.mark.parametrize(
    "sent",
    ["abc-123", "0af7651916cd43dd8448eb211c80319c", "trace:span/1+x=y@z.q_", "a" * 128],
)
def test_a_clients_request_id_is_kept_when_acceptable(sent: str) -> None:
    assert logs.request_id(sent) == sent


@pytest.mark.parametrize(
    "sent", [None, "", "a" * 129, "has space", "line\nbreak", 'quo"te', "é", "semi;colon"]
)
def test_any_other_request_id_is_replaced_by_a_new_one(sent: str | None) -> None:
    made = logs.request_id(sent)
    assert made != sent and len(made) == 32 and made.isalnum()
    assert logs.request_id(sent) != made  # a new one each time


@pytest.fixture
def captured(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    """Logging configured as a chatsvc process does (format from the test's param), into a
    buffer; the root logger is restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    config = logs.config(request.param)
    config["handlers"]["stderr"]["stream"] = stream
    logging.config.dictConfig(config)
    yield stream
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


@pytest.mark.parametrize("captured", ["json"], indirect=True)
def test_json_lines_carry_the_ids_of_their_greenlet(captured: io.StringIO) -> None:
    log = logging.getLogger("chatsvc.test")

    def request() -> None:
        logs.REQUEST_ID.set("req-1")
        log.info("handling %s", "it")

    def answer() -> None:
        logs.MESSAGE_ID.set("msg-1")
        try:
            raise ValueError("multi\nline")
        except ValueError:
            log.exception("failed")

    gevent.joinall([gevent.spawn(request), gevent.spawn(answer)], raise_error=True)
    log.info("no context", extra={"message_id": "explicit"})
    gunicorn = logging.getLogger("gunicorn.error")
    gunicorn.propagate = True  # as gunicorn's logconfig_dict sets it
    gunicorn.info("Booting worker")

    lines = captured.getvalue().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(lines) == 4, lines
    first, second, third, fourth = records
    assert first["message"] == "handling it" and first["request_id"] == "req-1"
    assert "message_id" not in first
    assert first["level"] == "INFO" and first["logger"] == "chatsvc.test"
    assert isinstance(first["process"], int) and first["time"]
    assert second["message_id"] == "msg-1" and "request_id" not in second
    assert second["level"] == "ERROR" and "ValueError: multi\nline" in second["exc_info"]
    assert third["message_id"] == "explicit"
    assert fourth["logger"] == "gunicorn.error" and fourth["message"] == "Booting worker"


@pytest.mark.parametrize("captured", ["text"], indirect=True)
def test_text_lines_stay_readable_with_their_ids_at_the_end(captured: io.StringIO) -> None:
    log = logging.getLogger("chatsvc.test")

    def request() -> None:
        logs.REQUEST_ID.set("req-2")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("went wrong")

    gevent.spawn(request).get()
    log.warning("plain")
    lines = captured.getvalue().splitlines()
    assert lines[0].endswith("ERROR chatsvc.test: went wrong [request_id=req-2]"), lines[0]
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-2] == "RuntimeError: boom"
    assert lines[-1].endswith("WARNING chatsvc.test: plain")
    assert not any(line.startswith("{") for line in lines)
