"""The edges of HTTP through gunicorn's gevent server as shipped: a body sent without a
length (``Transfer-Encoding: chunked``) is read whole, and one past the limit is 413 in the
JSON error model, like one with a ``Content-Length``; what gevent refuses before any app
code runs (a request line past 8 KiB, a header line past its limit, a garbled request)
answers in the error model too (``gateway.server``)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

SLEEP = {"task": "demo.sleep", "params": {"seconds": 0, "steps": 1}}


def chunks(body: bytes, size: int = 65536) -> Iterator[bytes]:
    """``body`` as a generator: requests sends it chunked, with no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_a_chunked_submit_is_read_whole(gateway_url, partner):
    body = json.dumps({**SLEEP, "metadata": {"blob": "x" * 10_000}}).encode()
    answer = requests.post(
        f"{gateway_url}/v1/jobs",
        data=chunks(body, 1000),
        headers={**partner["headers"], "Content-Type": "application/json"},
        timeout=10,
    )
    assert answer.request.headers.get("Transfer-Encoding") == "chunked"
    assert answer.status_code == 202, answer.text
    location = gateway_url + answer.headers["Location"]
    job = requests.get(location, headers=partner["headers"], timeout=10)
    assert job.json()["metadata"]["blob"] == "x" * 10_000


def test_a_chunked_body_past_the_limit_is_413(gateway_url, partner):
    body = json.dumps({**SLEEP, "metadata": {"blob": "x" * (2 * 1024 * 1024)}}).encode()
    answer = requests.post(
        f"{gateway_url}/v1/jobs",
        data=chunks(body),
        headers={**partner["headers"], "Content-Type": "application/json"},
        timeout=10,
    )
    assert answer.request.headers.get("Transfer-Encoding") == "chunked"
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "payload_too_large"


def raw_exchange(gateway_url: str, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """(status line, headers, body) of one raw request on its own connection."""
    address = urlsplit(gateway_url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /v1/jobs/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", "414", "uri_too_long"),
        (
            b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
            "400",
            "bad_request",
        ),
        (b"NOT HTTP\r\n\r\n", "400", "bad_request"),
    ],
    ids=["long-request-line", "long-header", "garbled"],
)
def test_what_gevent_refuses_is_answered_in_the_error_model(
    gateway_url, request_bytes, status, code
):
    line, headers, body = raw_exchange(gateway_url, request_bytes)
    assert line.split(" ")[1] == status, line
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == code
