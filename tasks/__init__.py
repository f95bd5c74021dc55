"""jobgate's Celery side: the app (``tasks.celery_app``) and the job tasks.

``celery -A tasks worker`` and ``jobgate worker`` load ``celery_app`` from here; it is
built from the environment (see docs/configuration.md) and connects to nothing until used.
"""

from tasks.app import JobTask, make_celery
from tasks.progress import Progress
from tasks.registry import job_task, job_types

celery_app = make_celery()

__all__ = ["celery_app", "make_celery", "job_task", "job_types", "JobTask", "Progress"]
