"""Liveness and readiness probes (no auth)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from gateway.extensions import services
from gateway.openapi import ok, operation
from gateway.schemas import HealthSchema

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@operation("Process is alive", ok(200, "Alive", HealthSchema), tag="operations", secured=False)
def healthz():
    """The process answers; says nothing about Redis or workers."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
@operation(
    "Redis reachable and a worker answers",
    {**ok(200, "Ready", HealthSchema), **ok(503, "Not ready", HealthSchema)},
    tag="operations",
    secured=False,
)
def readyz():
    """Ready when Redis answers and at least one Celery worker replies to a ping."""
    svc = services()
    checks = {"redis": False, "workers": 0}
    try:
        checks["redis"] = bool(svc.store.redis.ping())
        replies = svc.celery.control.ping(timeout=1.0, limit=1) or []
        checks["workers"] = len(replies)
    except Exception as exc:  # noqa: BLE001 - readiness reports, never raises
        checks["error"] = type(exc).__name__
    ready = checks["redis"] and checks["workers"] > 0
    return jsonify({"status": "ready" if ready else "unavailable", "checks": checks}), (
        200 if ready else 503
    )
