"""``GET /metrics``: Prometheus text.

Job and queue figures are read from Redis at scrape time, so every gunicorn worker
answers the same totals; request counts and latencies are per process.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gateway.extensions import Services
from gateway.openapi import ok, operation
from jobgate.archive import oldest_age
from jobgate.sweeper import REPAIR_KINDS

bp = Blueprint("metrics", __name__)


class RedisCollector:
    """Job totals by outcome and queue depths, straight from Redis."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def collect(self):
        store, settings = self.svc.store, self.svc.settings
        try:
            pipe = store.redis.pipeline()
            pipe.hgetall(store.key("stats"))
            pipe.hgetall(store.key("repairs"))
            pipe.zcard(store.due_key)
            pipe.zcard(store.open_key)
            pipe.xlen(store.archive_key)
            pipe.xrange(store.archive_key, "-", "+", count=1)
            for queue in (settings.queue_jobs, settings.queue_webhooks):
                pipe.llen(queue)
            counts, repaired, due, open_deliveries, backlog, oldest, *depths = pipe.execute()
        except Exception:  # noqa: BLE001 - a scrape must not fail when Redis is down
            yield GaugeMetricFamily("jobgate_redis_up", "Redis answered this scrape", 0)
            return
        yield GaugeMetricFamily("jobgate_redis_up", "Redis answered this scrape", 1)
        jobs = CounterMetricFamily(
            "jobgate_jobs", "Jobs by event (submitted or final status)", labels=["event"]
        )
        for event in ("submitted", "SUCCESS", "FAILURE", "REVOKED"):
            jobs.add_metric([event], float(counts.get(event, 0)))
        yield jobs
        queue = GaugeMetricFamily(
            "jobgate_queue_length", "Messages waiting per Celery queue", labels=["queue"]
        )
        for name, depth in zip((settings.queue_jobs, settings.queue_webhooks), depths, strict=True):
            queue.add_metric([name], depth)
        yield queue
        repairs = CounterMetricFamily(
            "jobgate_repairs",
            "Records the sweeper repaired, by kind (jobgate.sweeper)",
            labels=["kind"],
        )
        for kind in REPAIR_KINDS:
            repairs.add_metric([kind], float(repaired.get(kind, 0)))
        yield repairs
        yield GaugeMetricFamily(
            "jobgate_deliveries_scheduled", "Webhook retries waiting on the due set", due
        )
        yield GaugeMetricFamily(
            "jobgate_deliveries_open",
            "Webhook attempts queued or scheduled, not yet recorded",
            open_deliveries,
        )
        yield GaugeMetricFamily(
            "jobgate_archive_backlog",
            "Changes waiting on the archive stream for the database",
            backlog,
        )
        yield GaugeMetricFamily(
            "jobgate_archive_lag_seconds",
            "Age of the oldest change not archived yet",
            oldest_age(oldest),
        )
        yield CounterMetricFamily(
            "jobgate_archive_dead_letters",
            "Subjects the archive set aside: the database refused them alone (dead_letters)",
            float(counts.get("dead_letters", 0)),
        )
        yield GaugeMetricFamily(
            "jobgate_database_up",
            "The database answered this scrape",
            1 if database_answers(self.svc) else 0,
        )


def database_answers(svc: Services) -> bool:
    try:
        svc.db.ping()
    except Exception:  # noqa: BLE001 - any driver error means "down" here
        return False
    return True


def init_metrics(app: Flask) -> None:
    """Per-app registry: request counter and latency histogram, plus the Redis figures."""
    registry = CollectorRegistry()
    requests_total = Counter(
        "jobgate_http_requests",
        "HTTP requests by route and status",
        ["method", "route", "status"],
        registry=registry,
    )
    latency = Histogram(
        "jobgate_http_request_seconds",
        "Request latency by route",
        ["method", "route"],
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30),
    )
    registry.register(RedisCollector(app.extensions["jobgate"]))
    app.extensions["jobgate_metrics"] = registry

    # prometheus_client validates labels on every .labels() call; the children for a
    # (method, route, status) never change, so each is looked up once per process.
    children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
    served: set[str] = set()

    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        # Labels only from the app's own routes: a made-up method or path must not add
        # a series (each one stays in every scrape for the life of the process).
        if not served:
            served.update(*(rule.methods or () for rule in app.url_map.iter_rules()))
        method = request.method if request.method in served else "other"
        route = request.url_rule.rule if request.url_rule else "unmatched"
        status = response.status_code
        child = children.get((method, route, status))
        if child is None:
            child = children[method, route, status] = (
                latency.labels(method, route),
                requests_total.labels(method, route, str(status)),
            )
        if "started" in g:
            child[0].observe(time.perf_counter() - g.started)
        child[1].inc()
        return response


@bp.get("/metrics")
@operation(
    "Prometheus metrics",
    ok(200, "Prometheus text format", {"type": "string"}, media="text/plain"),
    tag="operations",
    secured=False,
)
def metrics() -> Response:
    registry = current_app.extensions["jobgate_metrics"]
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")
