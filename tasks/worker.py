"""The worker's entry module: ``celery -A tasks.worker worker`` (``jobgate worker`` runs it).

The one place the Celery app is built from the environment at import time.
"""

from tasks.app import make_celery

app = make_celery()
