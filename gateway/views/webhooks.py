"""Revoke (admin), webhook deliveries and redelivery of a job."""

from __future__ import annotations

from flask import Blueprint, jsonify

from gateway import jobs
from gateway.auth import admin_required, authenticate, login_required
from gateway.errors import APIError
from gateway.extensions import services
from gateway.openapi import EMPTY_BODY, READ, ok, operation
from gateway.revoke import revoke_job
from gateway.schemas import load_or_422
from gateway.schemas.jobs import JobSchema, RevokeSchema
from gateway.schemas.webhooks import DeliveriesSchema, RedeliverySchema
from gateway.views.common import json_body_or_empty
from jobgate import history
from jobgate.events import job_event
from jobgate.status import TERMINAL, webhook_summary
from jobgate.webhooks import messagelog
from jobgate.webhooks.attempt import redeliver as queue_redelivery
from jobgate.webhooks.ledger import Deliveries

bp = Blueprint("webhooks", __name__, url_prefix="/v1/jobs")
REVOKE = RevokeSchema()


@bp.post("/<job_id>/revoke")
@operation(
    "Revoke a job (admin)",
    ok(202, "Revoked", JobSchema),
    (*READ, 400, 403, 409, 413, 422),
    tag="jobs",
    body=RevokeSchema,
    body_required=False,
)
@admin_required
def revoke(job_id: str):
    body = load_or_422(REVOKE, json_body_or_empty())
    view = revoke_job(
        services(), job_id, by="admin", reason=body["reason"], terminate=body["terminate"]
    )
    return jsonify(view), 202


@bp.get("/<job_id>/deliveries")
@operation(
    "Every webhook delivery attempt",
    ok(200, "Attempts, oldest first", DeliveriesSchema),
    READ,
    tag="webhooks",
)
@login_required
def deliveries(job_id: str):
    svc = services()
    record = jobs.find(svc, authenticate(), job_id)
    books = Deliveries(svc.store)
    if svc.store.job(job_id) is None:  # Redis forgot the job: its attempts are archived
        webhook, attempts = webhook_summary(record), history.attempts(svc.db, job_id)
    else:
        webhook = books.summary(job_id, bool(record.get("callback_url")))
        attempts = messagelog.joined(
            svc.store, [(job_id, entry) for entry in books.attempts(job_id)], svc.db
        )
    answer = {"job_id": job_id, "webhook": webhook, "deliveries": attempts}
    if not record.get("callback_url"):
        messages = jobs.endpoint_messages(svc, job_id)
        answer["endpoint_messages"] = messages
        if messages:
            answer["webhook"] = jobs.messages_summary(messages)
    return jsonify(answer)


@bp.post("/<job_id>/redeliver")
@operation(
    "Send the terminal event again (same webhook-id)",
    ok(202, "Queued again", RedeliverySchema),
    (*READ, 400, 409, 413),
    tag="webhooks",
    body=EMPTY_BODY,
    body_required=False,
)
@login_required
def redeliver(job_id: str):
    svc = services()
    record = jobs.find(svc, authenticate(), job_id)
    json_body_or_empty()
    if not record.get("callback_url"):
        raise APIError(409, "conflict", "This job has no callback_url to deliver to.")
    status = record.get("status")
    if status not in TERMINAL:
        raise APIError(
            409,
            "conflict",
            "The job has not finished; there is no event yet.",
            {"status": status or "PENDING"},
        )
    event = job_event(status)
    if svc.store.job(job_id) is None:  # only archived now: the attempt reads it in Redis
        svc.store.put_back(record)
    wid = queue_redelivery(svc.store, svc.messenger, "job", job_id, event)
    return jsonify(
        {
            "job_id": job_id,
            "event": event,
            "webhook_id": wid,
            "webhook": Deliveries(svc.store).summary(job_id),
        }
    ), 202
