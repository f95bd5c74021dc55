"""Small request helpers shared by the blueprints."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, request

from gateway.errors import APIError


def json_body() -> dict[str, Any]:
    """The request body as a JSON object, or 400 ``invalid_json``.

    An empty body counts as ``{}`` only on routes whose every field is optional; those
    pass ``allow_empty=True`` through ``json_body_or_empty``.
    """
    data = request.get_json(silent=True, force=True)
    if not isinstance(data, dict):
        raise APIError(400, "invalid_json", "The request body must be a JSON object.")
    return data


def json_body_or_empty() -> dict[str, Any]:
    """Like json_body, but an empty body means ``{}``."""
    if not request.get_data(cache=True):
        return {}
    return json_body()


def accepted(body: dict[str, Any], location: str, poll_after: str,
             status: int = 202) -> Response:
    """A long-running operation's answer: the resource, where to poll it, and when."""
    response = jsonify(body)
    response.status_code = status
    response.headers["Location"] = location
    response.headers["Retry-After"] = poll_after
    return response
