"""The error model: every failure is ``{"error": {"code", "message", "details"}}`` JSON.

No HTML page and no traceback ever reaches a client: HTTP errors are translated, Redis,
broker or database outages become ``503 unavailable`` and anything unexpected is logged
with an error id (and the job id when there is one) and answered ``500 internal_error``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, TypeVar

import sqlalchemy.exc
from flask import Flask, Response, jsonify, request
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

log = logging.getLogger("jobgate.errors")
T = TypeVar("T")

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class APIError(Exception):
    """An error the API answers on purpose, with its status, code and message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


def not_found(what: str = "job") -> APIError:
    return APIError(404, "not_found", f"No {what} with this id.")


def or_404(value: T | None, what: str) -> T:
    """``value``, or 404 ``not_found`` naming ``what`` when it is None."""
    if value is None:
        raise not_found(what)
    return value


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def register_error_handlers(app: Flask) -> None:
    """Install the handlers that keep every failure in the error model."""

    @app.errorhandler(APIError)
    def _api_error(exc: APIError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"The request body is larger than the limit of {limit} bytes."
        headers = {}
        if status == 405 and exc.valid_methods:
            headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        return error_response(
            status, HTTP_CODES.get(status, "http_error"), message, headers=headers
        )

    @app.errorhandler(RedisError)
    @app.errorhandler(KombuOperationalError)
    @app.errorhandler(ConnectionError)
    @app.errorhandler(sqlalchemy.exc.OperationalError)
    @app.errorhandler(sqlalchemy.exc.InterfaceError)
    @app.errorhandler(sqlalchemy.exc.TimeoutError)
    def _unavailable(exc: Exception) -> Response:
        log.warning("backing service unavailable on %s %s: %s", request.method, request.path, exc)
        which = (
            "database" if isinstance(exc, sqlalchemy.exc.SQLAlchemyError) else "job store or broker"
        )
        return error_response(
            503,
            "unavailable",
            f"The {which} is unreachable; try again shortly.",
            headers={"Retry-After": "5"},
        )

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return _http_error(exc)
        error_id = uuid.uuid4().hex[:12]
        job_id = (request.view_args or {}).get("job_id")
        log.exception(
            "unexpected error %s on %s %s (job %s)",
            error_id,
            request.method,
            request.path,
            job_id,
            extra={"job_id": job_id, "error_id": error_id},
        )
        return error_response(
            500,
            "internal_error",
            "Something went wrong on our side; it has been logged.",
            {"error_id": error_id},
        )
