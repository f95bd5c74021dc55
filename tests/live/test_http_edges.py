"""The edges of HTTP through gunicorn's gevent server as shipped: a body sent without a
length (``Transfer-Encoding: chunked``) is read whole, and one past the limit is 413 in the
JSON error model, like one with a ``Content-Length``."""

from __future__ import annotations

import json
from collections.abc import Iterator

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
