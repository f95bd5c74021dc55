"""jobgate's domain: the job store, job lifecycle, batches, webhook events and delivery.

Both sides use it: ``gateway`` (HTTP, Flask) and ``tasks`` (the Celery worker). It imports
neither of them, nor Flask, nor a Celery app; it queues Celery tasks through the
``jobgate.messages.Messenger`` each side hands it. See docs/architecture.md.
"""

__version__ = "0.1.0"
