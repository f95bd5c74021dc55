"""gunicorn's settings for the gateway, as production runs it.

``gunicorn 'wsgi:app'`` in the project directory reads them through ``gunicorn.conf.py``;
elsewhere ``gunicorn -c python:config.gunicorn 'wsgi:app'``. Command-line flags still win
(``gunicorn -w 4 'wsgi:app'``). docs/configuration.md lists the environment knobs.
"""

import os

# gevent: a request waiting on Redis (or holding `?wait=` / `/events` open) costs a
# greenlet, not an OS thread, so a few processes hold thousands of open streams, and no
# GIL hand-off between threads adds to the tail latency (docs/performance.md). gevent's
# own HTTP server (gevent.pywsgi) under gunicorn's process management rather than
# gunicorn's parser: it sends a response's headers and body in one write, not two, and
# spends less CPU per request (docs/performance.md, "Status").
worker_class = "gateway.server.Worker"  # gevent_pywsgi, its refusals in JSON
worker_connections = int(os.environ.get("JOBGATE_WEB_CONNECTIONS", "1000"))
# One process per core: each is single-threaded under gevent.
workers = int(os.environ.get("JOBGATE_WEB_WORKERS", str(os.cpu_count() or 1)))
# Each worker gets its own listening socket (SO_REUSEPORT), so the kernel spreads new
# connections over the workers instead of whichever wakes first taking most of them.
reuse_port = True
# Long enough for a `?wait=30` answer to finish on shutdown.
graceful_timeout = 35
keepalive = 5
