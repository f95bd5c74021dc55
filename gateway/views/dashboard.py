"""The dashboard (admin): workers, queues, the last hour's activity, failing and disabled
endpoints and dead letters, in one answer (``jobgate.dashboard`` bounds every read)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from gateway.auth import admin_required
from gateway.extensions import services
from gateway.openapi import AUTH, ok, operation
from jobgate import dashboard as board

bp = Blueprint("dashboard", __name__, url_prefix="/v1/dashboard")

COUNTS = {"type": "integer", "minimum": 0}
RATE = {
    "type": "number",
    "nullable": True,
    "description": "delivered / attempts (null: no attempt)",
}
ENDPOINT = {
    "type": "object",
    "description": "An endpoint, without its headers; its URL without query or user info.",
    "properties": {
        "id": {"type": "string"},
        "partner_id": {"type": "string"},
        "url": {"type": "string"},
        "enabled": {"type": "boolean"},
        "failing_since": {"type": "string", "nullable": True},
        "disabled_at": {"type": "string", "nullable": True},
        "disabled_reason": {"type": "string", "nullable": True},
    },
}
MINUTE = {
    "type": "object",
    "properties": {
        "minute": {"type": "string", "description": "The minute's start (UTC)."},
        "submitted": COUNTS,
        "started": COUNTS,
        "ended": COUNTS,
        "attempts": COUNTS,
        "delivered": COUNTS,
        "success_rate": RATE,
    },
}
QUEUE = {
    "type": "object",
    "properties": {
        "partner_id": {"type": "string"},
        "name": {"type": "string", "nullable": True},
        "queued": COUNTS,
        "running": COUNTS,
        "delayed": COUNTS,
        "total": COUNTS,
    },
}
DASHBOARD = {
    "type": "object",
    "required": ["workers", "queues", "activity", "endpoints", "dead_letters"],
    "properties": {
        "generated_at": {"type": "string"},
        "workers": {
            "type": "object",
            "properties": {
                "alive": COUNTS,
                "known": COUNTS,
                "nodes": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "node": {"type": "string"},
                            "alive": {"type": "boolean"},
                            "last_seen": {"type": "string"},
                            "pools": {"type": "array", "items": {"type": "string"}},
                            "slots": COUNTS,
                        },
                    },
                },
            },
        },
        "queues": {
            "type": "object",
            "description": f"The {board.TOP_PARTNERS} deepest partners; totals over all.",
            "properties": {
                "partners": {"type": "array", "items": QUEUE},
                "partners_total": COUNTS,
                "totals": {"type": "object", "additionalProperties": COUNTS},
            },
        },
        "activity": {
            "type": "object",
            "description": "The last hour, by minute (UTC), the current minute last.",
            "properties": {
                "since": {"type": "string"},
                "until": {"type": "string"},
                "minutes": {"type": "array", "items": MINUTE},
                "totals": MINUTE,
            },
        },
        "endpoints": {
            "type": "object",
            "properties": {
                state: {
                    "type": "object",
                    "properties": {
                        "count": COUNTS,
                        "newest": {"type": "array", "items": ENDPOINT},
                    },
                }
                for state in ("failing", "disabled")
            },
        },
        "dead_letters": {
            "type": "object",
            "properties": {
                "count": COUNTS,
                "newest": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "id": {"type": "integer"},
                            "kind": {"type": "string"},
                            "subject_id": {"type": "string"},
                            "at": {"type": "string"},
                            "error": {"type": "string"},
                        },
                    },
                },
            },
        },
    },
}


@bp.get("")
@operation(
    "Workers, queues, the last hour's activity, failing endpoints, dead letters (admin)",
    ok(200, "What the status page's dashboard shows", DASHBOARD),
    (*AUTH, 403),
    tag="operations",
)
@admin_required
def show():
    svc = services()
    return jsonify(board.snapshot(svc.store, svc.db, svc.settings.worker_alive_for))
