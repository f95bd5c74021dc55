"""WSGI entry point: ``gunicorn 'wsgi:app'`` or ``flask --app wsgi run``.

Settings are read once, here; a bad value stops the start with one line naming it.
"""

from config import Settings, SettingsError
from gateway import create_app

try:
    settings = Settings.from_env()
except SettingsError as exc:
    raise SystemExit(f"jobgate: {exc}") from None

app = create_app(settings)
