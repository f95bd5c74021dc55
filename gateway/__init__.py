"""jobgate's HTTP gateway: ``create_app(settings)`` builds the Flask app."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from config import Settings
from jobgate import __version__

__all__ = ["create_app", "__version__"]


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """Build the gateway for ``settings`` (the environment by default).

    Connects to nothing while building: Redis, the broker and the database are first used
    by requests (``wsgi.py`` checks the database is migrated before serving).
    """
    # Imported here, not at the top, so that ``from gateway.client import Client`` (the
    # partners' Python client) loads neither Flask's views nor Celery.
    from gateway import metrics, openapi
    from gateway.errors import register_error_handlers
    from gateway.extensions import Services
    from gateway.views import (
        archive,
        audit,
        batches,
        catalog,
        dashboard,
        endpoints,
        events,
        health,
        jobs,
        partners,
        ui,
        webhooks,
    )
    from gateway.views.common import refuse_foreign_ids, refuse_unstorable_url
    from jobgate import tracing
    from jobgate.db import Database
    from jobgate.partners import Partners
    from jobgate.ssrf import parse_allowlist
    from jobgate.store import Store
    from tasks.app import make_celery

    settings = settings or Settings.from_env()
    if overrides:
        settings = settings.with_overrides(**overrides)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body
    app.json.sort_keys = False
    store = Store.from_settings(settings)
    db = Database.from_settings(settings)
    app.extensions["jobgate"] = Services(
        settings=settings,
        store=store,
        db=db,
        partners=Partners(store, db),
        celery=make_celery(settings),
        allowlist=parse_allowlist(settings.callback_allowlist),
    )
    register_error_handlers(app)
    metrics.init_metrics(app)
    tracing.instrument_flask(app)  # only with OTEL_EXPORTER_OTLP_ENDPOINT set
    app.before_request(refuse_unstorable_url)
    app.before_request(refuse_foreign_ids)
    for module in (
        health,
        openapi,
        metrics,
        partners,
        catalog,
        jobs,
        batches,
        events,
        ui,
        webhooks,
        endpoints,
        archive,
        audit,
        dashboard,
    ):
        app.register_blueprint(module.bp)
    app.register_blueprint(catalog.event_types_bp)
    app.after_request(audit.record_admin_action)
    logging.getLogger("jobgate").setLevel(logging.INFO)
    return app
