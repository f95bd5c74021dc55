"""WSGI entry point: ``gunicorn 'wsgi:app'`` or ``flask --app wsgi run``."""

from gateway import create_app

app = create_app()
