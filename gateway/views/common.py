"""Small request helpers shared by the blueprints."""

from __future__ import annotations

import json
import math
from typing import Any

from flask import Response, jsonify, request

from gateway.errors import APIError


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_body() -> dict[str, Any]:
    """The request body as a JSON object, or 400 ``invalid_json``.

    Strict JSON: ``NaN``/``Infinity`` (and numbers that overflow to them, like ``1e999``)
    are refused, since they would come back in responses and signed webhooks as text no
    JSON parser accepts; so is nesting deep enough to exhaust the parser's recursion.
    """
    try:
        data = json.loads(
            request.get_data(cache=True), parse_constant=_no_constants, parse_float=_finite_float
        )
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise APIError(400, "invalid_json", "The request body must be a JSON object.")
    return data


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def json_body_or_empty() -> dict[str, Any]:
    """Like json_body, but an empty body means ``{}`` (routes whose fields are all optional)."""
    if not request.get_data(cache=True):
        return {}
    return json_body()


def accepted(body: dict[str, Any], location: str, poll_after: str, status: int = 202) -> Response:
    """A long-running operation's answer: the resource, where to poll it, and when."""
    response = jsonify(body)
    response.status_code = status
    response.headers["Location"] = location
    response.headers["Retry-After"] = poll_after
    return response
