"""``GET /openapi.json``: the OpenAPI 3 document, built from the marshmallow schemas."""

from __future__ import annotations

from functools import cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, jsonify

from gateway import __version__, schemas
from jobgate.status import STATUSES

bp = Blueprint("openapi", __name__)

ERRORS = {
    400: "The body is not a JSON object (`invalid_json`).",
    401: "Missing or wrong API key (`unauthorized`).",
    403: "A partner key on an admin route, or an admin key submitting (`forbidden`).",
    404: "Unknown id, or another partner's (`not_found`).",
    405: "Method not allowed on this route (`method_not_allowed`).",
    409: "Conflict (`conflict`, `idempotency_conflict`).",
    413: "Body over the configured limit (`payload_too_large`).",
    422: "Invalid fields (`validation_error`, `unknown_task`, `callback_url_refused`).",
    429: "Submission rate exceeded (`rate_limited`, with Retry-After).",
    500: "Unexpected error, logged with an error id (`internal_error`).",
    503: "Redis or the broker is unreachable (`unavailable`).",
}

JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
BATCH_ID = {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}}
PARTNER_ID = {"name": "partner_id", "in": "path", "required": True,
              "schema": {"type": "string"}}

DELIVERY = {
    "type": "object",
    "properties": {
        "webhook_id": {"type": "string"}, "event": {"type": "string"},
        "attempt": {"type": "integer"}, "at": {"type": "string"},
        "status_code": {"type": "integer", "nullable": True},
        "error": {"type": "string", "nullable": True},
        "duration_ms": {"type": "integer"},
        "next_attempt_at": {"type": "string", "nullable": True},
        "outcome": {"type": "string", "enum": ["delivered", "retry", "failed"]},
        "redelivery": {"type": "boolean"},
    },
}
BATCH = {
    "type": "object",
    "required": ["batch_id"],
    "properties": {
        "batch_id": {"type": "string"}, "status": {"type": "string"},
        "total": {"type": "integer"}, "completed": {"type": "integer"},
        "succeeded": {"type": "integer"}, "failed": {"type": "integer"},
        "revoked": {"type": "integer"}, "percent": {"type": "integer"},
        "job_ids": {"type": "array", "items": {"type": "string"}},
        "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
    },
}
BATCH_SUBMIT = {
    "type": "object",
    "required": ["jobs"],
    "additionalProperties": False,
    "properties": {
        "jobs": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["task"], "additionalProperties": False,
            "properties": {"task": {"type": "string"}, "params": {"type": "object"},
                           "metadata": {"type": "object"}}}},
        "callback_url": {"type": "string", "nullable": True},
        "metadata": {"type": "object"},
    },
}


def _ref(schema: Any) -> Any:
    """A component name becomes a $ref; inline JSON schemas pass through."""
    return {"$ref": f"#/components/schemas/{schema}"} if isinstance(schema, str) else schema


def _ok(status: int, description: str, schema: Any = None) -> dict[int, Any]:
    response: dict[str, Any] = {"description": description}
    if schema is not None:
        response["content"] = {"application/json": {"schema": _ref(schema)}}
    return {status: response}


def _op(summary: str, responses: dict[int, Any], errors: tuple[int, ...], *,
        body: Any = None, params: list[dict[str, Any]] | None = None,
        secured: bool = True, tag: str = "jobs") -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "tags": [tag],
                                 "responses": dict(responses)}
    for status in errors:
        operation["responses"][status] = {
            "description": ERRORS[status],
            "content": {"application/json": {"schema": _ref("Error")}}}
    if body is not None:
        operation["requestBody"] = {"required": True,
                                    "content": {"application/json": {"schema": _ref(body)}}}
    if params:
        operation["parameters"] = params
    if not secured:
        operation["security"] = []
    return operation


AUTH = (401, 500, 503)
READ = (*AUTH, 404)
WRITE = (400, *AUTH, 413, 422)


def build_spec() -> dict[str, Any]:
    """The whole document; routes and shapes follow shared/API.md."""
    spec = APISpec(title="jobgate", version=__version__, openapi_version="3.0.3",
                   plugins=[MarshmallowPlugin()],
                   info={"description": "Submit jobs over HTTP, run them on Celery, "
                                        "get Standard Webhooks when they end."})
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.options["security"] = [{"bearer": []}]
    for name in ("Error", "Job", "JobList", "JobSubmit", "Partner", "PartnerCreated",
                 "PartnerCreate", "Secret", "TaskInfo", "Revoke", "Health"):
        spec.components.schema(name, schema=getattr(schemas, f"{name}Schema"))
    spec.components.schema("Delivery", DELIVERY)
    spec.components.schema("Batch", BATCH)
    spec.components.schema("BatchSubmit", BATCH_SUBMIT)
    ref = {name: {"$ref": f"#/components/schemas/{name}"} for name in ("Batch", "Delivery")}
    idem = {"name": "Idempotency-Key", "in": "header", "required": False,
            "schema": {"type": "string", "minLength": 1, "maxLength": 255}}
    wait = {"name": "wait", "in": "query", "required": False,
            "schema": {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                       "maximum": 30}}
    list_params = [
        {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(STATUSES)}},
        {"name": "task", "in": "query", "schema": {"type": "string", "maxLength": 200}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                     "maximum": 100}},
        {"name": "cursor", "in": "query", "schema": {"type": "string", "maxLength": 200}},
    ]
    paths = {
        "/healthz": {"get": _op("Process is alive", _ok(200, "Alive", "Health"), (),
                                secured=False, tag="operations")},
        "/readyz": {"get": _op("Redis reachable and a worker answers",
                               {**_ok(200, "Ready", "Health"), **_ok(503, "Not ready", "Health")},
                               (), secured=False, tag="operations")},
        "/v1/partners": {
            "post": _op("Create a partner (admin); key and secret shown once",
                        _ok(201, "Created", "PartnerCreated"), (*WRITE, 403),
                        body="PartnerCreate", tag="partners"),
            "get": _op("List partners (admin); never keys or secrets",
                       _ok(200, "Partners", {"type": "object", "properties": {
                           "partners": {"type": "array",
                                        "items": {"$ref": "#/components/schemas/Partner"}}}}),
                       (*AUTH, 403), tag="partners"),
        },
        "/v1/partners/{partner_id}/rotate-secret": {
            "post": _op("Rotate a partner's webhook secret (admin)",
                        _ok(200, "New secret", "Secret"), (*READ, 400, 403, 413),
                        params=[PARTNER_ID], tag="partners"),
        },
        "/v1/tasks": {"get": _op("The task catalog with JSON schemas of params",
                                 _ok(200, "Tasks", {"type": "array", "items": {
                                     "$ref": "#/components/schemas/TaskInfo"}}), AUTH,
                                 tag="tasks")},
        "/v1/jobs": {
            "post": _op("Submit a job (partner)",
                        {**_ok(202, "Queued; Location names the job", "Job"),
                         **_ok(200, "Replay of an earlier Idempotency-Key", "Job")},
                        (*WRITE, 403, 409, 429), body="JobSubmit", params=[idem]),
            "get": _op("List the caller's jobs, newest first",
                       _ok(200, "A page of jobs", "JobList"), (*AUTH, 422),
                       params=list_params),
        },
        "/v1/jobs/{job_id}": {"get": _op("Read a job, optionally waiting for its end",
                                         _ok(200, "The job", "Job"), (*READ, 422),
                                         params=[JOB_ID, wait])},
        "/v1/jobs/{job_id}/events": {"get": _op(
            "Server-Sent Events: one per status/progress change, ends after the terminal one",
            {200: {"description": "text/event-stream",
                   "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
            READ, params=[JOB_ID])},
        "/v1/jobs/{job_id}/revoke": {"post": _op(
            "Revoke a job (admin)", _ok(202, "Revoked", "Job"), (*READ, 400, 403, 409, 413, 422),
            body="Revoke", params=[JOB_ID])},
        "/v1/jobs/{job_id}/deliveries": {"get": _op(
            "Every webhook delivery attempt", _ok(200, "Attempts", {"type": "object",
                                                                    "properties": {
                "job_id": {"type": "string"},
                "webhook": {"$ref": "#/components/schemas/WebhookSummary"},
                "deliveries": {"type": "array", "items": ref["Delivery"]}}}),
            READ, params=[JOB_ID], tag="webhooks")},
        "/v1/jobs/{job_id}/redeliver": {"post": _op(
            "Send the terminal event again (same webhook-id)",
            _ok(202, "Queued again", {"type": "object"}), (*READ, 400, 409, 413),
            params=[JOB_ID], tag="webhooks")},
        "/v1/batches": {"post": _op("Submit a batch of jobs (partner)",
                                    _ok(202, "Queued", "Batch"), (*WRITE, 403, 429),
                                    body="BatchSubmit", tag="batches")},
        "/v1/batches/{batch_id}": {"get": _op("A batch with counts and its jobs",
                                              _ok(200, "The batch", "Batch"), READ,
                                              params=[BATCH_ID], tag="batches")},
        "/v1/batches/{batch_id}/revoke": {"post": _op(
            "Revoke every unfinished job of a batch (admin)", _ok(202, "Revoked", "Batch"),
            (*READ, 400, 403, 413, 422), body="Revoke", params=[BATCH_ID], tag="batches")},
        "/metrics": {"get": _op("Prometheus metrics", {200: {
            "description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}}}}, (), secured=False,
            tag="operations")},
    }
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()


@cache
def _cached_spec() -> dict[str, Any]:
    return build_spec()


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(_cached_spec())
