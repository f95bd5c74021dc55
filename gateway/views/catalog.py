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
from gateway.schemas import TaskInfoSchema

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
