"""A webhook receiver for the end-to-end bench: verifies every signature, counts events.

Run as its own process (``python -m bench.receiver --port P`` with the partner's secret
in ``BENCH_WEBHOOK_SECRET``) so its CPU does not share a GIL with the load generator.
``GET /stats`` answers what it saw: per job the webhook ids, duplicates (the same
webhook-id delivered again after a 2xx), bad signatures, and the latency from the job's
``finished_at`` to the arrival of its webhook. ``GET /stats?detail=1`` adds, per job, its
webhook ids, the first arrival, how often each id arrived and the distinct ends announced
(event type, status and ``finished_at``: two of them are two terminal events).

``--fail-ratio R`` (default 0: off) answers 500 to about that share of attempts, decided
per attempt by a hash of the webhook id, the attempt number (arrivals of that id so far,
counted here) and ``--fail-seed``: deterministic, and a retry of a refused attempt may pass.
A refused attempt is not counted as received (the sender must send it again).

``--slow-seconds S`` (default 0: off) makes requests to paths under ``/slow`` wait S
seconds before answering: a slow partner's receiver, for ``bench.peer``'s scenario where
a tenth of the callbacks go there (set S just under the sender's webhook timeout, so the
attempt holds its sender for the whole timeout and still succeeds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

from bench.common import ms, percentile


class Receiver(ThreadingHTTPServer):
    """A partner's server as deployed: a listen backlog of 1024 (nginx's default is 511).
    socketserver's own, 5, reset connections when a delivery pool of 100 connected at
    once: about 20 webhooks of 2000 were retried 6 s later, which measured the receiver."""

    request_queue_size = 1024


class Tally:
    """Everything received, behind one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids_by_job: dict[str, set[str]] = {}
        self.seen_ids: set[str] = set()
        self.duplicates = 0
        self.bad_signatures = 0
        self.bad_samples: list[dict[str, Any]] = []  # evidence: the first few
        self.truncated = 0  # bodies shorter than their Content-Length (sender died mid-POST)
        self.received = 0
        self.latencies: list[float] = []
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.arrivals: dict[str, int] = {}  # webhook id -> attempts that reached us
        self.refused = 0  # attempts answered 500 (--fail-ratio)
        self.first_by_job: dict[str, float] = {}
        self.ends_by_job: dict[str, set[str]] = {}  # job -> "type status finished_at"
        self.duplicated: dict[str, int] = {}  # webhook id -> 2xx answers after the first

    def arrive(self, webhook_id: str, fail_ratio: float, seed: str) -> bool:
        """Count an attempt of ``webhook_id``; True if it is to be refused (500)."""
        with self.lock:
            attempt = self.arrivals.get(webhook_id, 0)
            self.arrivals[webhook_id] = attempt + 1
            if fail_ratio <= 0:
                return False
            digest = hashlib.sha256(f"{seed}:{webhook_id}:{attempt}".encode()).digest()
            refuse = int.from_bytes(digest[:8], "big") / 2**64 < fail_ratio
            self.refused += refuse
            return refuse

    def add(self, webhook_id: str, payload: dict[str, Any], now: float) -> None:
        data = payload.get("data") or {}
        job_id = data.get("job_id", "?")
        finished = data.get("finished_at")
        with self.lock:
            self.received += 1
            self.first_at = self.first_at or now
            self.last_at = now
            # Counted for a redelivered id too: the same id must announce the same end.
            end = f"{payload.get('type')} {data.get('status')} {finished}"
            self.ends_by_job.setdefault(job_id, set()).add(end)
            if webhook_id in self.seen_ids:
                self.duplicates += 1
                self.duplicated[webhook_id] = self.duplicated.get(webhook_id, 0) + 1
                return
            self.seen_ids.add(webhook_id)
            self.ids_by_job.setdefault(job_id, set()).add(webhook_id)
            self.first_by_job.setdefault(job_id, now)
            if finished:
                ended = datetime.fromisoformat(finished.replace("Z", "+00:00")).timestamp()
                self.latencies.append(now - ended)

    def stats(self, with_jobs: bool, detail: bool = False) -> dict[str, Any]:
        with self.lock:
            out: dict[str, Any] = {
                "received": self.received,
                "unique": len(self.seen_ids),
                "jobs": len(self.ids_by_job),
                "duplicates": self.duplicates,
                "jobs_with_several_ids": sum(len(v) > 1 for v in self.ids_by_job.values()),
                "bad_signatures": self.bad_signatures,
                "truncated": self.truncated,
                "first_at": self.first_at,
                "last_at": self.last_at,
                "latency_p50_ms": ms(percentile(self.latencies, 50)),
                "latency_p99_ms": ms(percentile(self.latencies, 99)),
                "latency_max_ms": ms(max(self.latencies) if self.latencies else None),
            }
            if with_jobs:
                out["job_ids"] = sorted(self.ids_by_job)
            if detail:
                out["refused"] = self.refused
                out["bad_signature_samples"] = list(self.bad_samples)
                out["duplicated_ids"] = dict(self.duplicated)
                out["by_job"] = {
                    job: {
                        "ids": sorted(ids),
                        "first_at": self.first_by_job[job],
                        "arrivals": {i: self.arrivals.get(i, 0) for i in ids},
                        "ends": sorted(self.ends_by_job.get(job, ())),
                    }
                    for job, ids in self.ids_by_job.items()
                }
            return out


def make_handler(
    tally: Tally,
    verifier: Webhook,
    fail_ratio: float = 0.0,
    fail_seed: str = "",
    slow_seconds: float = 0.0,
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

        def _answer(self, code: int, body: bytes = b"") -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            now = time.time()
            headers = {k.lower(): v for k, v in self.headers.items()}
            if len(body) < length:  # the connection closed mid-body: nothing to verify
                with tally.lock:
                    tally.truncated += 1
                self.close_connection = True
                return
            try:
                payload = verifier.verify(body, headers)
            except WebhookVerificationError as exc:
                with tally.lock:
                    tally.bad_signatures += 1
                    if len(tally.bad_samples) < 10:
                        tally.bad_samples.append(
                            {
                                "webhook_id": headers.get("webhook-id"),
                                "webhook_timestamp": headers.get("webhook-timestamp"),
                                "at": now,
                                "length": len(body),
                                "error": str(exc),
                                "body_head": body[:200].decode(errors="replace"),
                            }
                        )
                self._answer(400)
                return
            if tally.arrive(headers["webhook-id"], fail_ratio, fail_seed):
                self._answer(500)
                return
            if slow_seconds > 0 and self.path.startswith("/slow"):
                time.sleep(slow_seconds)  # a slow partner: counted once it answers
            tally.add(headers["webhook-id"], payload, now)
            self._answer(204)

        def do_GET(self) -> None:  # noqa: N802
            if not self.path.startswith("/stats"):
                self._answer(404)
                return
            stats = tally.stats(with_jobs="jobs=1" in self.path, detail="detail=1" in self.path)
            self._answer(200, json.dumps(stats).encode())

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--fail-ratio",
        type=float,
        default=0.0,
        help="answer 500 to about this share of attempts (default 0: none)",
    )
    parser.add_argument("--fail-seed", default="", help="mixed into the refusal hash")
    parser.add_argument(
        "--slow-seconds",
        type=float,
        default=0.0,
        help="requests to /slow... wait this long before answering (default 0: off)",
    )
    args = parser.parse_args(argv)
    verifier = Webhook(os.environ["BENCH_WEBHOOK_SECRET"])
    handler = make_handler(Tally(), verifier, args.fail_ratio, args.fail_seed, args.slow_seconds)
    server = Receiver(("127.0.0.1", args.port), handler)
    server.daemon_threads = True
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
