"""``GET /openapi.json``: the OpenAPI 3 document, built from the app's routes.

Each view carries its own operation (``@operation(...)`` right under its route decorator);
``build_spec`` walks ``app.url_map`` and asks apispec's FlaskPlugin for each rule's path,
so adding a route and its documentation is one edit, in the view's file. What the
operations share lives here: the error responses, the security scheme, and the component
schemas (marshmallow, from gateway/schemas/, converted by apispec's MarshmallowPlugin).

A route without an operation that is not in ``NOT_IN_DOCUMENT`` makes ``build_spec``
raise, so it cannot be left out by accident (the unit tests build the document).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec_webframeworks.flask import FlaskPlugin
from flask import Blueprint, Flask, current_app, jsonify
from werkzeug.routing import Rule

from gateway import __version__, schemas
from gateway.schemas import endpoints, jobs, partners, webhooks

F = TypeVar("F", bound=Callable[..., Any])

bp = Blueprint("openapi", __name__)

OPERATION_ATTR = "openapi_operation"  # where @operation leaves the operation on the view
IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})  # Flask answers these for every route

# Routes deliberately left out of the document, by endpoint, each with its reason. Every
# other route must carry an @operation; tests/unit/test_openapi.py checks both ways.
NOT_IN_DOCUMENT = {
    # The document itself: describing it inside it would add nothing a client can use.
    "openapi.openapi_json": "the OpenAPI document itself",
    # The status page: HTML shells for browsers, no API contract (docs/ui.md).
    "ui.jobs_page": "status page HTML (docs/ui.md)",
    "root": "a redirect to the status page for browsers (docs/ui.md); a 404 for the rest",
    "ui.job_page": "status page HTML (docs/ui.md)",
    "ui.endpoints_page": "status page HTML (docs/ui.md)",
    "ui.audit_page": "status page HTML (docs/ui.md)",
    "ui.dashboard_page": "status page HTML (docs/ui.md)",
    "ui.batch_page": "status page HTML (docs/ui.md)",
    # Static files: the status page's scripts and styles, served by Flask itself.
    "ui.static": "status page scripts and styles",
    "static": "Flask's own static route for gateway/static (the same files as ui.static)",
}

ERRORS = {
    400: "The body is not a JSON object (`invalid_json`).",
    401: "Missing or wrong API key (`unauthorized`).",
    403: "A partner key on an admin route, or an admin key submitting (`forbidden`).",
    404: "Unknown id, or another partner's (`not_found`).",
    405: "Method not allowed on this route (`method_not_allowed`).",
    409: "Conflict (`conflict`, `idempotency_conflict`).",
    413: "Body over the configured limit (`payload_too_large`).",
    422: "Invalid fields, query parameters or ids (`validation_error`, `unknown_task`, "
    "`callback_url_refused`).",
    429: "Over a limit, with Retry-After (`rate_limited`: submissions; `limit_exceeded`).",
    500: "Unexpected error, logged with an error id (`internal_error`).",
    503: "Redis or the broker is unreachable (`unavailable`).",
}

# Error statuses most routes share: any keyed route, one naming an id (422: an id holding
# text that cannot be stored, gateway.views.common), one taking a body.
AUTH = (401, 500, 503)
READ = (*AUTH, 404, 422)
# The query of a list read newest first by id (``gateway.schemas.PageArgs``).
PAGE_PARAMS = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
    {"name": "cursor", "in": "query", "schema": {"type": "integer", "minimum": 1}},
]
WRITE = (400, *AUTH, 413, 422)

# Component schemas, registered under these names in this order: a nested schema before
# the ones holding it, since the MarshmallowPlugin registers a nested schema it has not
# seen yet under its class name less "Schema" (as it does for a schema a view names that
# is not listed here), and registering that name again fails.
# Each is ``<name>Schema`` of one of SCHEMA_MODULES.
SCHEMA_MODULES = (schemas, jobs, webhooks, partners, endpoints)
COMPONENTS = (
    "Error",
    "EndpointMessage",  # nested in Job's webhook
    "Job",
    "JobList",
    "JobSubmit",
    "Partner",
    "PartnerCreated",
    "PartnerCreate",
    "PartnerList",
    "Secret",
    "Key",
    "PartnerState",
    "PartnerDetail",
    "Endpoint",
    "EndpointCreated",
    "EndpointSecret",
    "EndpointCreate",
    "EndpointPatch",
    "EndpointList",
    "Recover",
    "Recovered",
    "RotateKey",
    "TaskInfo",
    "Revoke",
    "Health",
    "Delivery",
    "EndpointAttempt",
    "EndpointAttempts",
    "Deliveries",
    "Redelivery",
    "BatchMember",
    "Batch",
    "BatchSubmit",
    "DeadLetter",
    "DeadLetters",
)

# Headers of a submission's answer (gateway.views.common.accepted).
ACCEPTED_HEADERS = {
    "Location": {"description": "Where to read what was queued.", "schema": {"type": "string"}},
    "Retry-After": {
        "description": "Seconds to wait before the first read.",
        "schema": {"type": "integer"},
    },
}

# The body of routes that take no fields but refuse a body that is not a JSON object.
EMPTY_BODY = {"type": "object", "description": "Ignored; the body may also be empty."}

# A Flask rule's variable part, "<name>" or "<converter(args):name>".
RULE_ARGUMENT = re.compile(r"<(?:([a-zA-Z_][a-zA-Z0-9_]*)(?:\([^)]*\))?:)?([^<>:]+)>")
CONVERTER_TYPES = {"int": {"type": "integer"}, "float": {"type": "number"}}


def _ref(schema: Any) -> Any:
    """A component name becomes a $ref; marshmallow schemas and JSON schemas pass through
    (the MarshmallowPlugin turns a schema class into the $ref of its component)."""
    return {"$ref": f"#/components/schemas/{schema}"} if isinstance(schema, str) else schema


def ok(
    status: int,
    description: str,
    schema: Any = None,
    media: str = "application/json",
    headers: dict[str, Any] | None = None,
) -> dict[int, Any]:
    """One non-error response; ``schema`` is a marshmallow schema, a component name or a
    JSON schema, sent as ``media``; ``headers`` the response headers worth naming."""
    response: dict[str, Any] = {"description": description}
    if headers:
        response["headers"] = headers
    if schema is not None:
        response["content"] = {media: {"schema": _ref(schema)}}
    return {status: response}


def operation(
    summary: str,
    responses: dict[int, Any],
    errors: tuple[int, ...] = (),
    *,
    tag: str,
    body: Any = None,
    body_required: bool = True,
    params: list[dict[str, Any]] | None = None,
    secured: bool = True,
) -> Callable[[F], F]:
    """Document the decorated view as one OpenAPI operation (its rule's one method).

    ``responses`` are the answers it gives on success (``ok(...)``), ``errors`` the error
    statuses (keys of ``ERRORS``), ``body`` the request body's schema, ``params`` the
    query or header parameters; path parameters come from the rule. ``secured=False``
    for routes that need no key. Put it right under the route decorator.
    """
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": dict(responses)}
    for status in errors:
        op["responses"][status] = {
            "description": ERRORS[status],
            "content": {"application/json": {"schema": _ref("Error")}},
        }
    if body is not None:
        op["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    if params:
        op["parameters"] = list(params)
    if not secured:
        op["security"] = []

    def attach(view: F) -> F:
        setattr(view, OPERATION_ATTR, op)
        return view

    return attach


def path_parameters(rule: Rule) -> list[dict[str, Any]]:
    """The rule's variables as OpenAPI path parameters, in the order they appear."""
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": dict(CONVERTER_TYPES.get(converter, {"type": "string"})),
        }
        for converter, name in RULE_ARGUMENT.findall(rule.rule)
    ]


def documented_rules(app: Flask) -> list[tuple[Rule, str, dict[str, Any]]]:
    """(rule, method, operation) for every route of the document, in url_map order.

    Raises LookupError for a route that has no operation and is not in NOT_IN_DOCUMENT,
    for an operation on a rule with more than one method, and for a view routed by more
    than one rule (FlaskPlugin would put both under the first rule's path): split the view.
    """
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in NOT_IN_DOCUMENT:
            continue
        op = getattr(app.view_functions[rule.endpoint], OPERATION_ATTR, None)
        if op is None:
            raise LookupError(
                f"{rule.rule} ({rule.endpoint}) has no OpenAPI operation: add "
                "@operation(...) under its route, or list it in "
                "gateway.openapi.NOT_IN_DOCUMENT with the reason"
            )
        methods = sorted((rule.methods or set()) - IGNORED_METHODS)
        if len(list(app.url_map.iter_rules(rule.endpoint))) != 1:
            raise LookupError(
                f"{rule.endpoint} is routed by more than one rule: give each "
                "rule its own view, with its own @operation"
            )
        if len(methods) != 1:
            raise LookupError(
                f"{rule.rule} ({rule.endpoint}) serves {methods}: one "
                "@operation documents one method, so give each its own view"
            )
        found.append((rule, methods[0], op))
    return found


def build_spec(app: Flask) -> dict[str, Any]:
    """The whole document for ``app``'s routes; docs/api.md is the contract in prose."""
    spec = APISpec(
        title="jobgate",
        version=__version__,
        openapi_version="3.0.3",
        plugins=[FlaskPlugin(), MarshmallowPlugin()],
        info={
            "description": "Submit jobs over HTTP, run them on Celery, "
            "get Standard Webhooks when they end."
        },
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.options["security"] = [{"bearer": []}]
    for name in COMPONENTS:
        found = (getattr(module, f"{name}Schema", None) for module in SCHEMA_MODULES)
        spec.components.schema(name, schema=next(filter(None, found)))
    for rule, method, op in documented_rules(app):
        op = {**op, "parameters": [*path_parameters(rule), *op.get("parameters", [])]}
        if not op["parameters"]:
            del op["parameters"]
        # FlaskPlugin finds the view's rule and turns "<job_id>" into "{job_id}".
        spec.path(view=app.view_functions[rule.endpoint], app=app, operations={method.lower(): op})
    return spec.to_dict()


@bp.get("/openapi.json")
def openapi_json():
    document = current_app.extensions.get("jobgate_openapi")
    if document is None:
        document = current_app.extensions["jobgate_openapi"] = build_spec(current_app)
    return jsonify(document)
