"""Read by ``gunicorn 'wsgi:app'`` run in this directory: the settings in config/gunicorn.py."""

from config.gunicorn import *  # noqa: F403
