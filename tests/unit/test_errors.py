"""How driver errors read to a client: each cause keeps its own sentence."""

from __future__ import annotations

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from chatsvc.errors import Unavailable, wrap_exceptions


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (PoolTimeout("couldn't get a connection"), "too busy to reach the database"),
        (psycopg.errors.QueryCanceled("canceling statement"), "did not answer in time"),
        (psycopg.OperationalError("connection refused"), "The database is unavailable"),
    ],
)
def test_driver_errors_become_unavailable_saying_why(error: Exception, message: str) -> None:
    with pytest.raises(Unavailable) as raised, wrap_exceptions():
        raise error
    assert message in str(raised.value.message)
    assert raised.value.status == 503 and raised.value.headers == {"Retry-After": "1"}
