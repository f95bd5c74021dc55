"""gunicorn's gevent worker as the gateway ships it (``config/gunicorn.py``): gevent's
own HTTP server, whose refusals of a request no app code sees (a request line past 8 KiB,
a malformed request or header line) answer in the API's JSON error model too.

gevent's ``WSGIHandler.handle_one_request`` returns such a refusal as ``(status, bytes)``
(its documented return values); the handler here swaps the bytes, nothing else.
"""

from __future__ import annotations

import json
from typing import Any

from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler


def _answer(status: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message, "details": {}}}).encode()
    head = (
        f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


REFUSALS = {
    "414": _answer("414 URI Too Long", "uri_too_long", "The request line is longer than 8 KiB."),
    "400": _answer(
        "400 Bad Request",
        "bad_request",
        "The request could not be read: a malformed or too long request or header line.",
    ),
}


class JSONRefusals(PyWSGIHandler):
    """gunicorn's handler, with gevent's refusals in the error model."""

    def handle_one_request(self) -> Any:
        result = super().handle_one_request()
        if isinstance(result, tuple) and str(result[0]) in REFUSALS:
            return result[0], REFUSALS[str(result[0])]
        return result


class Worker(GeventPyWSGIWorker):
    """``gevent_pywsgi`` with ``JSONRefusals``."""

    wsgi_handler = JSONRefusals
