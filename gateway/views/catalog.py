"""The task catalog: what can be submitted, with the JSON schema of its params."""

from __future__ import annotations

from functools import cache
from typing import Any

from apispec.ext.marshmallow import OpenAPIConverter
from flask import Blueprint, jsonify

from gateway.auth import login_required
from gateway.extensions import services
from gateway.jobs import catalog
from gateway.openapi import AUTH, ok, operation
from gateway.schemas import EventTypeListSchema, TaskInfoSchema
from jobgate.events import EVENT_TYPES

bp = Blueprint("tasks", __name__, url_prefix="/v1/tasks")

_converter = OpenAPIConverter(
    openapi_version="3.0.3", schema_name_resolver=lambda s: None, spec=None
)


@cache
def params_schema(schema_cls: type) -> dict[str, Any]:
    """JSON schema of a marshmallow params schema (nested schemas inlined)."""
    return _converter.schema2jsonschema(schema_cls())


@bp.get("")
@operation(
    "The task catalog with JSON schemas of params",
    ok(200, "Tasks", TaskInfoSchema(many=True)),
    AUTH,
    tag="tasks",
)
@login_required
def index():
    return jsonify(
        [
            {"name": jt.name, "description": jt.description, "params": params_schema(jt.params)}
            for jt in catalog(services()).values()
        ]
    )


event_types_bp = Blueprint("event_types", __name__, url_prefix="/v1/event-types")

SAMPLE_AT = "2024-05-01T12:00:03.512Z"


@event_types_bp.get("")
@operation(
    "The webhook event catalog: every event type, with a sample payload of each operational one",
    ok(200, "Event types", EventTypeListSchema),
    AUTH,
    tag="webhooks",
)
@login_required
def event_types():
    return jsonify(
        {
            "event_types": [
                {
                    "name": event.name,
                    "description": event.description,
                    "operational": event.operational,
                    "sample": (
                        {"type": event.name, "timestamp": SAMPLE_AT, "data": event.sample}
                        if event.sample is not None
                        else None
                    ),
                }
                for event in EVENT_TYPES.values()
            ]
        }
    )
