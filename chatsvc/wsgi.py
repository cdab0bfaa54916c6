"""The WSGI entry point for gunicorn workers: `chatsvc.wsgi:app`.

Import this only in a process gevent has already patched (gunicorn's gevent
worker patches before it loads the app; never use --preload): psycopg picks its
wait function at import, and the blocking one would stall every greenlet.
"""

from __future__ import annotations

from chatsvc.config import Settings
from chatsvc.embedded import start_embedded
from chatsvc.engine.runtime import check_cooperative
from chatsvc.web.app import create_app

check_cooperative()

_settings = Settings.from_env()
app = create_app(
    _settings,
    database_url=_settings.database_url or start_embedded(_settings.data_dir, stop_at_exit=False),
)
