"""pytest plugin loaded first (-p tests.gevent_patch): the test process runs under gevent.

chatsvc runs in gevent workers, so the tests do too: the app under test is served
by gevent's WSGI server inside the test process, and psycopg must be imported only
after the patch, exactly as in production.
"""

from gevent import monkey

monkey.patch_all()
