"""WSGI entry point: ``gunicorn 'wsgi:app'`` or ``flask --app wsgi run``.

Settings are read once, here; a bad value stops the start with one line naming it, and
so does a database that is unreachable or not migrated (``jobgate db upgrade``).
"""

from config import Settings, SettingsError
from gateway import create_app
from jobgate.db import Database, DatabaseNotReady

try:
    settings = Settings.from_env()
    Database.from_settings(settings).check_migrated()
except (SettingsError, DatabaseNotReady) as exc:
    raise SystemExit(f"jobgate: {exc}") from None

app = create_app(settings)
