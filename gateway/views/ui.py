"""The status page: static HTML shells whose data all comes from the JSON API.

The pages are served without auth and hold no data. The browser asks for an API key in a
form, keeps it in ``sessionStorage`` and sends it as ``Authorization: Bearer`` with
``fetch``; it never travels in a URL, a cookie or a log line.
"""

from __future__ import annotations

from flask import Blueprint, Response, redirect, render_template, request

from gateway.errors import APIError
from jobgate.status import STATUSES

bp = Blueprint(
    "ui",
    __name__,
    url_prefix="/ui",
    template_folder="../templates",
    static_folder="../static",
    static_url_path="/static",
)

# Only our own scripts, styles and API: no inline script, no third-party origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)


@bp.after_request
def harden(response: Response) -> Response:
    """Lock the pages down: strict CSP, no referrer, no caching, no framing."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


@bp.get("/")
def jobs_page() -> str:
    """The login form and, once a key is given, the caller's jobs."""
    return render_template("ui_jobs.html", page="jobs", job_id="", statuses=STATUSES)


@bp.get("/jobs/<job_id>")
def job_page(job_id: str) -> str:
    """One job: live progress bar, result or error, and a revoke button for admins."""
    return render_template("ui_job.html", page="job", job_id=job_id)


@bp.get("/audit")
def audit_page() -> str:
    """The audit log (admins): every admin action, newest first."""
    return render_template("ui_audit.html", page="audit", job_id="")


@bp.get("/endpoints")
def endpoints_page() -> str:
    """A partner's endpoints: list, add, test, attempts and recover (admins: every one)."""
    return render_template("ui_endpoints.html", page="endpoints", job_id="")


def root() -> Response:
    """``/``: a browser is sent to the status page; an API client (JSON, or ``*/*`` as
    curl sends) gets the error model's ``404`` naming where things are."""
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":
        return redirect("/ui/", code=302)
    raise APIError(
        404,
        "not_found",
        "Nothing is served at /: the status page is at /ui/, the API under /v1/, "
        "its contract at /openapi.json.",
        {"ui": "/ui/", "openapi": "/openapi.json"},
    )


# Outside the blueprint's /ui prefix: the gateway's root.
bp.record_once(lambda state: state.app.add_url_rule("/", "root", root, methods=["GET"]))


@bp.get("/dashboard")
def dashboard_page() -> str:
    """Admins: workers, queues, the last hour's chart, failing endpoints, dead letters."""
    return render_template("ui_dashboard.html", page="dashboard", job_id="")


@bp.get("/batches/<batch_id>")
def batch_page(batch_id: str) -> str:
    """One batch: its counts and its members, each linked to its job page."""
    return render_template("ui_batch.html", page="batch", job_id="", batch_id=batch_id)
