"""The pressure gauge (loop lag, pool queue) that decides whether a worker takes an answer."""

from __future__ import annotations

import logging
import time

import gevent
import pytest
from prometheus_client import REGISTRY

from chatsvc.engine.pressure import Pressure


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_a_lone_stall_does_not_make_a_worker_busy_but_a_lasting_lag_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="chatsvc.engine.pressure")
    pressure = Pressure(250)
    pressure.observe(5.0)  # one stall, however long, counts for twice the limit at most
    assert not pressure.overloaded and abs(pressure.lag - 0.5 / 3) < 1e-9
    assert not caplog.records
    pressure.observe(0.6)
    assert pressure.overloaded and _sample("chatsvc_workers_busy") == 1
    (busy,) = caplog.records
    assert busy.levelno == logging.WARNING and "busy, refusing new answers" in busy.getMessage()
    assert "event loop lag 278 ms (smoothed; limit 250)" in busy.getMessage()
    pressure.observe(0.0)
    assert not pressure.overloaded and pressure.lag < 0.25
    assert _sample("chatsvc_workers_busy") == 0
    assert caplog.records[-1].getMessage().startswith("no longer busy")
    for _ in range(5):
        pressure.observe(0.3)
    assert pressure.overloaded  # a lag just over the limit, lasting
    pressure.observe(0.2)
    assert pressure.overloaded  # it stays busy while the smoothed lag is over the limit


def test_with_the_limit_zero_a_worker_is_never_busy() -> None:
    pressure = Pressure(0)
    for _ in range(10):
        pressure.observe(5.0)
    assert pressure.lag > 4 and not pressure.overloaded


def test_measure_sees_a_loop_blocked_by_a_greenlet() -> None:
    pressure = Pressure(1000)
    count = _sample("chatsvc_loop_lag_seconds_count")
    sampler = gevent.spawn(pressure.measure, 0.01)
    gevent.sleep(0)  # the sampler starts its sleep
    blocked_until = time.monotonic() + 0.3
    while time.monotonic() < blocked_until:  # CPU work that never yields
        pass
    assert sampler.get(timeout=5) >= 0.25
    assert _sample("chatsvc_loop_lag_seconds_count") == count + 1
    assert pressure.lag >= 0.25 / 3


def test_an_idle_loop_measures_almost_no_lag() -> None:
    pressure = Pressure(100)
    measured = [pressure.measure(0.01) for _ in range(5)]
    assert min(measured) < 0.05 and not pressure.overloaded


def test_requests_waiting_for_the_pool_three_samples_in_a_row_make_a_worker_busy() -> None:
    pressure = Pressure(250)
    for waiting in (2, 1, 0, 4, 1):  # a queue that empties in between is not starvation
        pressure.observe(0.0, waiting)
    assert not pressure.overloaded
    pressure.observe(0.0, 1)
    assert pressure.overloaded and pressure.lag == 0.0
    pressure.observe(0.0, 0)
    assert not pressure.overloaded


def test_measure_reads_the_pools_queue() -> None:
    queue = [3]
    pressure = Pressure(250, waiting=lambda: queue[0])
    for _ in range(3):
        pressure.measure(0.001)
    assert pressure.overloaded
    queue[0] = 0
    pressure.measure(0.001)
    assert not pressure.overloaded
