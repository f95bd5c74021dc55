"""jobgate's Celery side: the app factory (``make_celery``), the task catalog, the job tasks.

Importing this package builds no app and connects to nothing. The worker's entry module is
``tasks.worker`` (``celery -A tasks.worker worker``, which ``jobgate worker`` runs); it
builds the app from the environment. Nothing here imports the HTTP gateway.
"""

from tasks.app import JobTask, make_celery
from tasks.progress import Progress
from tasks.registry import job_task, job_types

__all__ = ["make_celery", "job_task", "job_types", "JobTask", "Progress"]
