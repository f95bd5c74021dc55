"""jobgate's Celery app made the current/default app, for Flower only.

``tasks.worker.app`` is built with ``set_as_current=False``; Flower's ``/api/task/result``
uses ``AsyncResult(id)`` on the default app and answers 503 without it. Same app, same
settings, same Redis: ``celery -A bench.flower_app flower``.
"""

from tasks.worker import app as celery_app

celery_app.set_current()
celery_app.set_default()

app = celery_app
