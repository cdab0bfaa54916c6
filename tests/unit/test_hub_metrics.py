"""The hub's part in the metrics: subscribers counted once, delivery lag from a commit's stamp."""

from __future__ import annotations

from uuid import uuid4

from prometheus_client import REGISTRY

from chatsvc.engine import events
from chatsvc.engine.hub import CLOSING, RESYNC, Hub


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_subscribers_are_counted_while_subscribed_and_once() -> None:
    hub = Hub(4)
    before = _sample("chatsvc_subscribers")
    a, b = hub.subscribe(uuid4()), hub.subscribe(uuid4(), uuid4())
    assert _sample("chatsvc_subscribers") == before + 2
    a.close()
    a.close()  # closing twice changes nothing
    assert _sample("chatsvc_subscribers") == before + 1
    b.close()
    assert _sample("chatsvc_subscribers") == before


def test_delivery_lag_is_observed_only_for_an_event_taken_from_the_hub() -> None:
    hub = Hub(4)
    conversation, message = uuid4(), uuid4()
    sub = hub.subscribe(message)
    count = "chatsvc_delivery_lag_seconds_count"
    before = _sample(count, transport="sse")

    assert sub.get(0.0) is None  # silence: a heartbeat, not an event
    sub.delivered("sse")
    assert _sample(count, transport="sse") == before

    hub.publish([events.Delta(conversation, message, 0, 5, "hello")])
    assert isinstance(sub.get(0.0), events.Delta)
    assert sub.received_at is not None
    sub.delivered("sse")
    sub.delivered("sse")  # a second client event made from the same hub event
    assert _sample(count, transport="sse") == before + 2
    assert _sample("chatsvc_delivery_lag_seconds_sum", transport="sse") < 60

    for sentinel in (RESYNC, CLOSING):
        hub.broadcast(sentinel)
        assert sub.get(0.0) is sentinel and sub.received_at is None
    sub.close()


def test_an_overflowing_subscriber_is_counted_once_per_overflow() -> None:
    hub = Hub(1)
    conversation, message = uuid4(), uuid4()
    sub = hub.subscribe(message)
    before = _sample("chatsvc_subscriber_overflows_total")
    hub.publish([events.Delta(conversation, message, i, i + 1, "x") for i in range(5)])
    assert _sample("chatsvc_subscriber_overflows_total") == before + 1
    assert sub.get(0.0) is RESYNC and sub.received_at is None
    sub.close()
