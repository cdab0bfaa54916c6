"""The request's view of the process: its Runtime, and the one request prologue."""

from __future__ import annotations

from flask import current_app

from chatsvc.engine.runtime import Runtime


def runtime() -> Runtime:
    """The Runtime of the current Flask app."""
    rt: Runtime = current_app.extensions["chatsvc"]
    return rt
