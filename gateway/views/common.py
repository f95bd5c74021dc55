"""Small request helpers shared by the blueprints."""

from __future__ import annotations

import json
import math
from typing import Any

from flask import Response, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from gateway.errors import APIError, not_found
from jobgate.db import UNSTORABLE, escape_unstorable

# Text the database cannot store (jobgate.db.UNSTORABLE) is refused wherever a caller
# sends it: a job holding it would never reach the database.
UNSTORABLE_VALUE = "Must not contain NUL (\\u0000) or an unpaired surrogate (\\ud800-\\udfff)."
UNSTORABLE_KEY = "This key (shown escaped) must not contain NUL or an unpaired surrogate."
MAX_REPORTED = 100  # fields named in one answer; a body may hold thousands
MAX_DEPTH = 32  # a field deeper than this is named by its first MAX_DEPTH steps


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_body() -> dict[str, Any]:
    """The request body as a JSON object, or 400 ``invalid_json``.

    Strict JSON: ``NaN``/``Infinity`` (and numbers that overflow to them, like ``1e999``)
    are refused, since they would come back in responses and signed webhooks as text no
    JSON parser accepts; so is nesting deep enough to exhaust the parser's recursion.
    Text the database cannot store, anywhere in it, is 422 (``unstorable_fields``).
    """
    raw, text = request.get_data(cache=True), ""
    refuse_cut_short(raw)
    try:
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")  # as json.loads does
        data = json.loads(text, parse_constant=_no_constants, parse_float=_finite_float)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise APIError(400, "invalid_json", "The request body must be a JSON object.")
    if _may_hold_unstorable(text):
        refuse_unstorable(unstorable_fields(data))
    return data


def refuse_cut_short(raw: bytes) -> None:
    """413 for a body sent without a length (chunked) that goes past the limit: Werkzeug
    stops reading it at ``MAX_CONTENT_LENGTH`` and hands over what it read, which would
    otherwise be refused as broken JSON."""
    limit = request.max_content_length
    if (
        request.content_length is None
        and limit is not None
        and len(raw) >= limit
        and request.environ["wsgi.input"].read(1)
    ):
        raise RequestEntityTooLarge()


def _may_hold_unstorable(text: str) -> bool:
    """Whether a JSON text can parse to text the database cannot store: only through a
    ``\\u`` escape of NUL or a surrogate (strict JSON has no raw control characters), or
    a raw surrogate. A cheap test first, since walking every body cost 4x its parse."""
    if "\\" in text and ("\\u0000" in text or "\\ud" in text or "\\uD" in text):
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def unstorable_fields(data: Any) -> dict[str, Any]:
    """Where parsed JSON holds text the database cannot store, in any key or string at any
    depth: ``{field: {…: [message]}}`` nested as the input is (a list item by its index,
    a bad key escaped); ``{}`` when there is none."""
    details: dict[str, Any] = {}
    reported = 0
    stack: list[tuple[tuple[str, ...], Any]] = [((), data)]
    while stack and reported < MAX_REPORTED:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if UNSTORABLE.search(key):
                    _nest(details, (*path, escape_unstorable(key)), UNSTORABLE_KEY)
                    reported += 1
                else:
                    stack.append(((*path, key), item))
        elif isinstance(value, list):
            stack.extend(((*path, str(index)), item) for index, item in enumerate(value))
        elif isinstance(value, str) and UNSTORABLE.search(value):
            _nest(details, path, UNSTORABLE_VALUE)
            reported += 1
    return details


def _nest(details: dict[str, Any], path: tuple[str, ...], message: str) -> None:
    """Put ``[message]`` at ``path`` (cut to MAX_DEPTH steps) in nested ``details``."""
    path = path[:MAX_DEPTH]
    node = details
    for step in path[:-1]:
        if not isinstance(node.get(step), dict):
            node[step] = {}
        node = node[step]
    node[path[-1]] = [message]


def refuse_unstorable(details: dict[str, Any]) -> None:
    """422 ``validation_error`` naming each field that holds text the database cannot store."""
    if details:
        raise APIError(
            422,
            "validation_error",
            "The request holds text that cannot be stored (NUL or an unpaired surrogate).",
            details,
        )


def refuse_unstorable_url() -> None:
    """Before every request: path values and query parameters under the rule of bodies
    (a NUL in an id or a cursor would otherwise reach the database)."""
    details: dict[str, Any] = {
        name: [UNSTORABLE_VALUE]
        for name, value in (request.view_args or {}).items()
        if isinstance(value, str) and UNSTORABLE.search(value)
    }
    for name, value in request.args.items(multi=True):
        if UNSTORABLE.search(name):
            details[escape_unstorable(name)] = [UNSTORABLE_KEY]
        elif UNSTORABLE.search(value):
            details[name] = [UNSTORABLE_VALUE]
    refuse_unstorable(details)


# What each path id names, for its 404.
PATH_IDS = {
    "job_id": "job",
    "batch_id": "batch",
    "partner_id": "partner",
    "endpoint_id": "endpoint",
}


def refuse_foreign_ids() -> None:
    """Before every request, after ``refuse_unstorable_url``: a path id jobgate cannot have
    made (over 64 characters, or holding ``:``, its Redis keys' separator) is 404 before
    any store is asked; ``<batch id>:jobs`` would otherwise read the batch's member list
    as its record."""
    for name, value in (request.view_args or {}).items():
        if name in PATH_IDS and isinstance(value, str) and (len(value) > 64 or ":" in value):
            raise not_found(PATH_IDS[name])


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


def accepted(
    body: dict[str, Any], location: str, poll_after: str, status: int = 202
) -> tuple[Response, int, dict[str, str]]:
    """A long-running operation's answer: the resource, where to poll it, and when."""
    return jsonify(body), status, {"Location": location, "Retry-After": poll_after}
