"""A loop in its own greenlet with a wake-up event and a stop flag."""

from __future__ import annotations

import gevent
import gevent.event


class Background:
    """Subclasses implement `_run`, looping until `_stopped` and waiting on `_wake`."""

    def __init__(self) -> None:
        self._wake = gevent.event.Event()
        self._stopped = False
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        """Run the loop in a greenlet."""
        self._greenlet = gevent.spawn(self._run)

    def wake(self) -> None:
        """Make the loop go round now."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to end and wait for it (it finishes what it is doing)."""
        self._stopped = True
        self._wake.set()
        if self._greenlet is not None:
            self._greenlet.join(timeout=timeout)

    def _run(self) -> None:
        raise NotImplementedError
