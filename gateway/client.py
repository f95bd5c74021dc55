"""A small typed Python client for jobgate, and ``verify_webhook`` for receivers.

Submit a job and wait for it (the wait is held by the server, ``?wait=``, not polled)::

    from gateway.client import Client

    jg = Client("https://jobs.example.com", "jgp_...")
    job = jg.submit("documents.process",
                    {"documents": [{"name": "a.txt", "text": "hello world"}]},
                    metadata={"order": 42})
    done = jg.wait(job["job_id"], timeout=120)
    print(done["status"], done["result"])

Follow progress live (Server-Sent Events)::

    for event in jg.events(job["job_id"]):
        print(event.event, event.data["status"], event.data["progress"])

Check a webhook in a receiver (Flask shown; any framework gives headers and raw body)::

    from gateway.client import WebhookVerificationError, verify_webhook

    @app.post("/hooks")
    def hook():
        try:
            event = verify_webhook(SECRET, request.headers, request.get_data())
        except WebhookVerificationError:
            return "", 400
        handle(event["type"], event["data"])
        return "", 204
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from jobgate.signing import PUBLIC_KEY_PREFIX, sign
from jobgate.status import TERMINAL

__all__ = [
    "Client",
    "Event",
    "JobgateError",
    "WaitTimeout",
    "WebhookVerificationError",
    "verify_webhook",
]

MAX_SERVER_WAIT = 30  # the gateway holds a ?wait= request at most this long
WEBHOOK_TOLERANCE = 300  # seconds a webhook timestamp may be off (Standard Webhooks)


class JobgateError(Exception):
    """The gateway answered an error: ``status``, ``code``, ``message``, ``details``."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


class WaitTimeout(TimeoutError):
    """``Client.wait`` ran out of time; ``job`` is the last view seen (not finished)."""

    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(f"job {job.get('job_id')} still {job.get('status')}")
        self.job = job


class WebhookVerificationError(ValueError):
    """A webhook's headers, timestamp or signature do not check out."""


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event: its type (``status`` or ``progress``), data and id."""

    event: str
    data: dict[str, Any]
    id: str | None = None


class Client:
    """jobgate over HTTP with one API key (partner, or admin for ``revoke``).

    >>> jg = Client("http://127.0.0.1:8000", "jgp_...")  # doctest: +SKIP
    >>> jg.get("3f0c...")["status"]  # doctest: +SKIP
    'SUCCESS'
    """

    def __init__(
        self, url: str, key: str, *, timeout: float = 30.0, session: requests.Session | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"
        self.session.headers.setdefault("User-Agent", "jobgate-client")

    def __repr__(self) -> str:  # never show the key
        return f"Client({self.url!r})"

    # ---------------------------------------------------------------- plumbing
    def _request(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        response = self.session.request(
            method, self.url + path, timeout=timeout or self.timeout, **kwargs
        )
        return _json_or_raise(response)

    # -------------------------------------------------------------------- jobs
    def submit(
        self,
        task: str,
        params: Mapping[str, Any] | None = None,
        *,
        callback_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Queue a job; returns it (status ``PENDING``).

        >>> jg.submit("demo.sleep", {"seconds": 1})["status"]  # doctest: +SKIP
        'PENDING'
        """
        body: dict[str, Any] = {"task": task, "params": dict(params or {})}
        if callback_url is not None:
            body["callback_url"] = callback_url
        if metadata is not None:
            body["metadata"] = dict(metadata)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._request("POST", "/v1/jobs", json=body, headers=headers)

    def get(self, job_id: str) -> dict[str, Any]:
        """The job now (status, progress, result or error)."""
        return self._request("GET", f"/v1/jobs/{job_id}")

    def wait(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """The job once it has finished; raises ``WaitTimeout`` after ``timeout`` seconds.

        Each request asks the gateway to hold it (``?wait=``, at most 30 s), so a job
        that ends is seen at once without polling.
        """
        deadline = time.monotonic() + timeout
        job = self.get(job_id)
        while job["status"] not in TERMINAL:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(job)
            hold = min(left, MAX_SERVER_WAIT)
            job = self._request(
                "GET",
                f"/v1/jobs/{job_id}",
                params={"wait": f"{hold:.3f}"},
                timeout=hold + self.timeout,
            )
        return job

    def events(self, job_id: str, *, reconnect: int = 3) -> Iterator[Event]:
        """Live events of a job (first the current view) until its terminal event.

        A stream the server closes early (its time limit, a restart) is reopened up to
        ``reconnect`` times in a row; heartbeats are skipped.
        """
        failures = 0
        while True:
            with self.session.get(
                f"{self.url}/v1/jobs/{job_id}/events",
                stream=True,
                headers={"Accept": "text/event-stream"},
                timeout=(self.timeout, max(self.timeout, 60.0)),
            ) as response:
                if response.status_code != 200:
                    _json_or_raise(response)
                for event in parse_sse(response.iter_lines(decode_unicode=True)):
                    failures = 0
                    yield event
                    if event.data.get("status") in TERMINAL:
                        return
            failures += 1
            if failures > reconnect:
                raise JobgateError(
                    0, "stream_closed", "The event stream closed before the job finished."
                )

    def revoke(self, job_id: str, *, reason: str = "", terminate: bool = True) -> dict[str, Any]:
        """Revoke a job (admin key); returns it, status ``REVOKED``."""
        return self._request(
            "POST", f"/v1/jobs/{job_id}/revoke", json={"reason": reason, "terminate": terminate}
        )

    def list(
        self,
        *,
        status: str | None = None,
        task: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
        include_result: bool = False,
    ) -> dict[str, Any]:
        """One page of jobs, newest first: ``{"jobs": [...], "next_cursor": ...}``; each
        job without its ``result`` unless ``include_result``."""
        params = {
            "status": status,
            "task": task,
            "limit": limit,
            "cursor": cursor,
            "include": "result" if include_result else None,
        }
        return self._request(
            "GET", "/v1/jobs", params={k: v for k, v in params.items() if v is not None}
        )

    def iter_jobs(
        self,
        *,
        status: str | None = None,
        task: str | None = None,
        page_size: int = 100,
        include_result: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Every job, newest first, following ``next_cursor`` page after page."""
        cursor = None
        while True:
            page = self.list(
                status=status,
                task=task,
                limit=page_size,
                cursor=cursor,
                include_result=include_result,
            )
            yield from page["jobs"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    # ----------------------------------------------------------------- batches
    def submit_batch(
        self,
        jobs: list[Mapping[str, Any]],
        *,
        callback_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Queue jobs together (each ``{"task", "params", ...}``); returns the batch."""
        body: dict[str, Any] = {"jobs": [dict(job) for job in jobs]}
        if callback_url is not None:
            body["callback_url"] = callback_url
        if metadata is not None:
            body["metadata"] = dict(metadata)
        return self._request("POST", "/v1/batches", json=body)

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        """The batch now: counts, percent and its jobs."""
        return self._request("GET", f"/v1/batches/{batch_id}")

    def revoke_batch(
        self, batch_id: str, *, reason: str = "", terminate: bool = True
    ) -> dict[str, Any]:
        """Revoke every unfinished job of a batch (admin key)."""
        return self._request(
            "POST",
            f"/v1/batches/{batch_id}/revoke",
            json={"reason": reason, "terminate": terminate},
        )

    # --------------------------------------------------------------- endpoints
    def create_endpoint(
        self,
        url: str,
        *,
        description: str = "",
        event_types: list[str] | None = None,
        headers: dict[str, str] | None = None,
        signature_scheme: str | None = None,
    ) -> dict[str, Any]:
        """Register a webhook endpoint; the answer holds its ``webhook_secret`` (only
        here), or its ``public_key`` for ``signature_scheme="ed25519"``. ``event_types``
        None or empty: every event. ``headers``: sent with every delivery to it."""
        body: dict[str, Any] = {"url": url, "description": description}
        if event_types:
            body["event_types"] = list(event_types)
        if headers:
            body["headers"] = dict(headers)
        if signature_scheme:
            body["signature_scheme"] = signature_scheme
        return self._request("POST", "/v1/endpoints", json=body)

    def endpoints(self, *, state: str | None = None) -> list[dict[str, Any]]:
        """Your endpoints (every partner's with an admin key); ``state`` ``enabled``,
        ``disabled`` or ``failing``."""
        params = {"state": state} if state else {}
        return self._request("GET", "/v1/endpoints", params=params)["endpoints"]

    def get_endpoint(self, endpoint_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/endpoints/{endpoint_id}")

    def update_endpoint(self, endpoint_id: str, **changes: Any) -> dict[str, Any]:
        """Change ``url``, ``description``, ``event_types``, ``headers`` (the whole set)
        or ``enabled`` (True re-enables a disabled endpoint)."""
        return self._request("PATCH", f"/v1/endpoints/{endpoint_id}", json=changes)

    def delete_endpoint(self, endpoint_id: str) -> None:
        response = self.session.delete(
            f"{self.url}/v1/endpoints/{endpoint_id}", timeout=self.timeout
        )
        if response.status_code != 204:
            _json_or_raise(response)

    def rotate_endpoint_secret(self, endpoint_id: str) -> dict[str, Any]:
        """A new signing secret; the old ones keep signing for the grace period."""
        return self._request("POST", f"/v1/endpoints/{endpoint_id}/rotate-secret")

    def test_endpoint(self, endpoint_id: str) -> dict[str, Any]:
        """Send a signed ``ping`` now; returns the attempt (``outcome``, ``status_code``)."""
        return self._request("POST", f"/v1/endpoints/{endpoint_id}/test", timeout=self.timeout + 20)

    def endpoint_attempts(
        self,
        endpoint_id: str,
        *,
        status: str | None = None,
        since: str | None = None,
        limit: int = 50,
        cursor: int | None = None,
    ) -> dict[str, Any]:
        """One page of attempts to the endpoint, newest first:
        ``{"attempts": [...], "next_cursor": ...}``."""
        params = {"status": status, "since": since, "limit": limit, "cursor": cursor}
        return self._request(
            "GET",
            f"/v1/endpoints/{endpoint_id}/attempts",
            params={k: v for k, v in params.items() if v is not None},
        )

    def recover_endpoint(self, endpoint_id: str, since: str) -> dict[str, Any]:
        """Send again every message to the endpoint that ended failed since ``since``
        (ISO 8601 with a zone): ``{"recovered", "webhook_ids"}``."""
        return self._request("POST", f"/v1/endpoints/{endpoint_id}/recover", json={"since": since})


def _json_or_raise(response: requests.Response) -> dict[str, Any]:
    """The JSON body of a 2xx answer; a ``JobgateError`` for anything else."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.ok and isinstance(body, dict):
        return body
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        raise JobgateError(
            response.status_code,
            str(error.get("code")),
            str(error.get("message")),
            error.get("details"),
        )
    raise JobgateError(
        response.status_code,
        "http_error",
        f"Unexpected answer ({response.reason or 'no JSON body'}).",
    )


def parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """Events of a ``text/event-stream`` given line by line (comments skipped)."""
    kind, data, event_id = "message", [], None
    for line in lines:
        if line == "":
            if data:
                yield Event(kind, json.loads("\n".join(data)), event_id)
            kind, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance: float = WEBHOOK_TOLERANCE,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a jobgate webhook (Standard Webhooks) and return its parsed payload.

    ``secret`` is the partner's ``whsec_...`` as jobgate issues it (a malformed one, or
    one shorter than 24 bytes, is refused as the gateway refuses it), or an ``ed25519``
    endpoint's ``whpk_...`` public key (its ``v1a`` signatures are then checked);
    ``headers`` any mapping (case does not
    matter); ``body`` the raw bytes received. Refuses (``WebhookVerificationError``) a
    missing header, a timestamp more than ``tolerance`` seconds away (replays) or no
    matching ``v1`` (``v1a``) signature; the comparison is constant-time. During a secret
    rotation the gateway sends two signatures and either may match.

    >>> event = verify_webhook(SECRET, request.headers, request.get_data())  # doctest: +SKIP
    >>> event["type"]  # doctest: +SKIP
    'job.succeeded'
    """
    lower = {str(name).lower(): value for name, value in headers.items()}
    try:
        webhook_id = lower["webhook-id"]
        timestamp = lower["webhook-timestamp"]
        signatures = lower["webhook-signature"]
    except KeyError as exc:
        raise WebhookVerificationError(f"missing header {exc.args[0]}") from None
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a number") from None
    if abs((time.time() if now is None else now) - sent_at) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance")
    raw = body.encode() if isinstance(body, str) else bytes(body)
    if secret.startswith(PUBLIC_KEY_PREFIX):
        if not _ed25519_signed(secret, f"{webhook_id}.{sent_at}.".encode() + raw, signatures):
            raise WebhookVerificationError("no matching signature")
        try:
            return json.loads(raw)
        except ValueError:
            raise WebhookVerificationError("the body is not JSON") from None
    try:
        expected = sign(secret, webhook_id, sent_at, raw)  # the gateway's own signing
    except ValueError as exc:  # a malformed secret or an empty id (never echoes the secret)
        raise WebhookVerificationError(str(exc)) from None
    for candidate in signatures.split():
        if hmac.compare_digest(candidate.encode(), expected.encode()):
            try:
                return json.loads(raw)
            except ValueError:
                raise WebhookVerificationError("the body is not JSON") from None
    raise WebhookVerificationError("no matching signature")


def _ed25519_signed(public_key: str, content: bytes, signatures: str) -> bool:
    """Does one ``v1a`` signature of ``signatures`` verify ``content`` with the ``whpk_`` key?"""
    try:
        raw = base64.b64decode(public_key[len(PUBLIC_KEY_PREFIX) :], validate=True)
        key = Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the public key is not whpk_ + 32 bytes of base64") from None
    for candidate in signatures.split():
        version, _, signature = candidate.partition(",")
        if version != "v1a":
            continue
        try:
            key.verify(base64.b64decode(signature, validate=True), content)
        except (InvalidSignature, binascii.Error, ValueError):
            continue
        return True
    return False
