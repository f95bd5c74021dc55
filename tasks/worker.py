"""The worker's entry module: ``celery -A tasks.worker worker`` (``jobgate worker`` runs it).

The one place the Celery app is built from the environment at import time; a bad setting
stops the start with one line naming it.
"""

from config import Settings, SettingsError
from tasks.app import instrument_worker, make_celery

try:
    settings = Settings.from_env()
except SettingsError as exc:
    raise SystemExit(f"jobgate: {exc}") from None

app = make_celery(settings)
instrument_worker()  # OpenTelemetry, only with OTEL_EXPORTER_OTLP_ENDPOINT set
