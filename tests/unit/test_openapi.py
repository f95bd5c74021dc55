"""The OpenAPI document is built from the app's routes: every route is in it (or excluded
on purpose, with a reason), nothing else is, and it is a valid OpenAPI 3 document.

No Redis needed: building the app connects to nothing, and the document is built without
a request.
"""

from __future__ import annotations

import pytest
from flask import Blueprint
from openapi_spec_validator import validate

from config import Settings
from gateway import create_app
from gateway.openapi import IGNORED_METHODS, NOT_IN_DOCUMENT, build_spec, ok, operation

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture(scope="module")
def app():
    # A Redis that is not there: proves the document needs none.
    return create_app(Settings(redis_url="redis://127.0.0.1:1/0", admin_keys=("k",)))


@pytest.fixture(scope="module")
def spec(app):
    return build_spec(app)


def openapi_path(rule: str) -> str:
    """Flask's "/v1/jobs/<job_id>" as OpenAPI's "/v1/jobs/{job_id}"."""
    from apispec_webframeworks.flask import FlaskPlugin

    return FlaskPlugin.flaskpath2openapi(rule)


def routed_operations(app) -> set[tuple[str, str]]:
    """(method, path) of every route of the app but the deliberate exclusions."""
    return {
        (method.lower(), openapi_path(rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint not in NOT_IN_DOCUMENT
        for method in (rule.methods or set()) - IGNORED_METHODS
    }


def documented_operations(spec) -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in spec["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def test_every_route_is_an_operation_of_the_document(app, spec):
    missing = routed_operations(app) - documented_operations(spec)
    assert not missing, f"routes missing from /openapi.json: {sorted(missing)}"


def test_every_operation_of_the_document_is_a_route(app, spec):
    stale = documented_operations(spec) - routed_operations(app)
    assert not stale, f"operations in /openapi.json that no route serves: {sorted(stale)}"


def test_exclusions_are_real_routes_and_undocumented(app, spec):
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert set(NOT_IN_DOCUMENT) <= endpoints, "an exclusion names no route any more"
    for rule in app.url_map.iter_rules():
        if rule.endpoint in NOT_IN_DOCUMENT:
            assert openapi_path(rule.rule) not in spec["paths"], rule.rule


def test_the_document_is_valid_openapi_3(spec):
    assert spec["openapi"] == "3.0.3"
    validate(spec)  # raises OpenAPIValidationError with the offending path


def test_path_parameters_come_from_the_rule(spec):
    operation_ = spec["paths"]["/v1/jobs/{job_id}"]["get"]
    assert operation_["parameters"][0] == {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    assert [p["name"] for p in operation_["parameters"]] == ["job_id", "wait"]


def test_served_document_is_the_built_one(app, spec):
    served = app.test_client().get("/openapi.json")
    assert served.status_code == 200
    assert served.get_json() == spec


def _app_with(view_blueprint: Blueprint):
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0"))
    app.register_blueprint(view_blueprint)
    return app


def test_a_route_without_operation_or_exclusion_is_refused():
    extra = Blueprint("extra", __name__)
    extra.add_url_rule("/v1/forgotten", "forgotten", lambda: "")
    with pytest.raises(LookupError, match="/v1/forgotten .*has no OpenAPI operation"):
        build_spec(_app_with(extra))


def test_adding_a_route_with_its_operation_is_one_edit():
    extra = Blueprint("extra", __name__)

    @extra.get("/v1/things/<int:thing_id>")
    @operation("Read a thing", ok(200, "The thing", {"type": "object"}), (404,), tag="things")
    def thing(thing_id: int):
        return {}

    spec = build_spec(_app_with(extra))
    get = spec["paths"]["/v1/things/{thing_id}"]["get"]
    assert get["summary"] == "Read a thing"
    assert get["parameters"] == [
        {"name": "thing_id", "in": "path", "required": True, "schema": {"type": "integer"}}
    ]
    assert set(get["responses"]) == {"200", "404"}


# ------------------------------------------------------- the document says what code does
def errors_against(spec, schema: dict, instance) -> list[str]:
    """Messages of ``instance`` against ``schema`` (its $refs resolved in ``spec``)."""
    from openapi_schema_validator import OAS30Validator

    validator = OAS30Validator({**schema, "components": spec["components"]})
    return [error.message for error in validator.iter_errors(instance)]


def body_schema(spec, path: str, method: str = "post") -> dict:
    return spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]


def test_a_batch_member_may_carry_its_own_callback_url(spec):
    """gateway.batches validates each member as a job, callback_url included."""
    batch = {
        "jobs": [
            {
                "task": "demo.sleep",
                "params": {"seconds": 1},
                "callback_url": "https://partner.example/hooks/jobs",
                "metadata": {"row": 2},
            }
        ],
        "callback_url": "https://partner.example/hooks/batches",
    }
    assert errors_against(spec, body_schema(spec, "/v1/batches"), batch) == []
    batch["jobs"][0]["colour"] = "red"  # what the code refuses, the document refuses
    assert errors_against(spec, body_schema(spec, "/v1/batches"), batch) != []


def test_batch_members_are_summaries_not_jobs(spec):
    from jobgate.batches import member_summary
    from jobgate.status import job_view

    batch = spec["paths"]["/v1/batches/{batch_id}"]["get"]["responses"]["200"]
    member = {"$ref": "#/components/schemas/BatchMember"}
    assert batch["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Batch"}
    assert spec["components"]["schemas"]["Batch"]["properties"]["jobs"]["items"] == member
    job = job_view(
        {
            "job_id": "j1",
            "task": "demo.sleep",
            "status": "SUCCESS",
            "result": {"slept": 1},
            "created_at": "2026-05-01T12:00:00.000Z",
            "finished_at": "2026-05-01T12:00:01.000Z",
            "batch_id": "b1",
        }
    )
    assert errors_against(spec, member, member_summary(job)) == []
    assert errors_against(spec, member, {"job_id": "j2", "status": None}) == []  # expired
    assert errors_against(spec, member, job) != []  # a full job is not what batches list


def test_routes_that_read_an_optional_body_say_so(spec):
    """json_body_or_empty: no body is fine, and so is any JSON object (its fields are ignored,
    or all optional)."""
    for path in (
        "/v1/jobs/{job_id}/redeliver",
        "/v1/partners/{partner_id}/rotate-secret",
        "/v1/jobs/{job_id}/revoke",
        "/v1/batches/{batch_id}/revoke",
    ):
        assert spec["paths"][path]["post"]["requestBody"]["required"] is False, path
    assert body_schema(spec, "/v1/jobs/{job_id}/redeliver")["type"] == "object"
    assert body_schema(spec, "/v1/jobs/{job_id}/revoke") == {"$ref": "#/components/schemas/Revoke"}
