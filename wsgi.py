"""WSGI entry point: ``gunicorn 'wsgi:app'`` or ``flask --app wsgi run``.

Settings are read once, here; a bad value stops the start with one line naming it, and
so does a database that is unreachable or not migrated (``jobgate db upgrade``), and a
``JOBGATE_SECRET_KEY`` that is missing or does not open the secrets stored.
"""

from config import Settings, SettingsError
from gateway import create_app
from jobgate.db import Database, DatabaseNotReady
from jobgate.sealing import SecretKeyError

try:
    settings = Settings.from_env()
    Database.from_settings(settings).check_ready(settings.secret_key)
except (SettingsError, DatabaseNotReady, SecretKeyError) as exc:
    raise SystemExit(f"jobgate: {exc}") from None

app = create_app(settings)
