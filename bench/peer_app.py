"""The peer: the job gateway a reader of the Celery tutorial would hand-roll (bench only).

A Flask route that ``apply_async``s, a task that signs (Standard Webhooks) and POSTs its
own webhook when it is done, the status from ``AsyncResult``; Celery's defaults
otherwise. What it leaves out is what jobgate adds: auth, validation, an SSRF guard,
job records, retries, acks_late, a delivery pool. ``gunicorn bench.peer_app:app`` and
``celery -A bench.peer_app:celery worker``; ``REDIS_URL``, ``PEER_WEBHOOK_SECRET``,
``PEER_WEBHOOK_TIMEOUT`` configure it. With ``PEER_DATABASE_URL`` the task also does what
Celery's documentation tells a user whose results matter ("store important results in
your database"): it commits its result row before it sends the webhook.
"""

import json
import os
import time
from datetime import UTC, datetime

import requests
from celery import Celery
from flask import Flask, request
from sqlalchemy import JSON, Column, DateTime, MetaData, String, Table, create_engine, insert
from standardwebhooks.webhooks import Webhook

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/10")
celery = Celery("peer", broker=REDIS_URL, backend=REDIS_URL)
app = Flask(__name__)
RESULTS = Table(
    "peer_results",
    MetaData(),
    Column("job_id", String(64), primary_key=True),
    Column("status", String(16)),
    Column("result", JSON),
    Column("finished_at", DateTime(timezone=True)),
)
_engine = None


def save_result(job_id: str, result: dict, finished_at: datetime) -> None:
    """The task's result row, committed (one engine per worker process, made after fork;
    the table is made before the worker starts: ``bench.peer.start_peer``)."""
    global _engine
    if _engine is None:
        _engine = create_engine(os.environ["PEER_DATABASE_URL"])
    with _engine.begin() as connection:
        connection.execute(
            insert(RESULTS),
            {"job_id": job_id, "status": "SUCCESS", "result": result, "finished_at": finished_at},
        )


@celery.task(bind=True, name="demo.sleep")
def sleep(self, seconds: float = 0, steps: int = 1, callback_url: str | None = None) -> dict:
    time.sleep(seconds)
    result, now = {"slept": seconds, "steps": steps}, datetime.now(UTC)
    if os.environ.get("PEER_DATABASE_URL"):
        save_result(self.request.id, result, now)
    if callback_url:  # the event jobgate would send, signed as jobgate signs it
        msg_id, data = "msg_" + self.request.id.replace("-", ""), {"job_id": self.request.id}
        data.update(status="SUCCESS", result=result, finished_at=now.isoformat())
        body = json.dumps({"type": "job.succeeded", "timestamp": now.isoformat(), "data": data})
        signature = Webhook(os.environ["PEER_WEBHOOK_SECRET"]).sign(msg_id, now, body)
        headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp()))}
        headers.update({"webhook-signature": signature, "content-type": "application/json"})
        timeout = float(os.environ.get("PEER_WEBHOOK_TIMEOUT", "10"))
        requests.post(callback_url, data=body, headers=headers, timeout=timeout)
    return result


@app.post("/v1/jobs")
def submit() -> tuple[dict, int]:
    body = request.get_json()
    params = {**body.get("params", {}), "callback_url": body.get("callback_url")}
    job = sleep.apply_async(kwargs=params)
    return {"job_id": job.id, "status": "PENDING"}, 202


@app.get("/v1/jobs/<job_id>")
def status(job_id: str) -> dict:
    job = celery.AsyncResult(job_id)
    return {"job_id": job_id, "status": job.state, "result": job.result if job.ready() else None}


@app.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}
