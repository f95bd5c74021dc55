"""The status page's routes without a browser: static shells, hardened headers, no data."""

from __future__ import annotations

import re


def test_pages_are_public_shells_with_a_strict_policy(client):
    for path in ("/ui/", "/ui/jobs/some-job"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.mimetype == "text/html"
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "form-action 'none'" in policy
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Cache-Control"] == "no-store"
        html = response.get_data(as_text=True)
        assert "<script>" not in html, "inline scripts would break the CSP"
        key_field = re.search(r'<input id="api-key"[^>]*>', html).group(0)
        assert "name=" not in key_field, "a named key field could be submitted in a URL"


def test_job_id_in_the_path_is_escaped(client):
    response = client.get("/ui/jobs/%22%3E%3Cimg%20src=x%20onerror=alert(1)%3E")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<img src=x" not in html
    assert 'data-job-id="&#34;&gt;&lt;img src=x onerror=alert(1)&gt;"' in html


def test_static_assets_are_served(client):
    script = client.get("/ui/static/ui.js")
    style = client.get("/ui/static/ui.css")
    assert script.status_code == 200 and "sessionStorage" in script.get_data(as_text=True)
    assert style.status_code == 200 and style.mimetype == "text/css"
    script.close()
    style.close()


def test_the_root_leads_browsers_to_the_status_page_and_api_clients_to_a_json_404(client):
    """`jobgate dev` prints http://127.0.0.1:8000: opened in a browser it must lead to
    the status page, not a JSON 404."""
    browser = client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert browser.status_code == 302 and browser.headers["Location"].endswith("/ui/")
    for accept in ("*/*", "application/json"):
        api = client.get("/", headers={"Accept": accept})
        assert api.status_code == 404 and api.mimetype == "application/json"
        error = api.get_json()["error"]
        assert error["code"] == "not_found" and "/ui/" in error["message"]


def test_dashboard_and_batch_pages_are_hardened_shells_without_data(client):
    for path in ("/ui/dashboard", "/ui/batches/some-batch"):
        response = client.get(path)
        assert response.status_code == 200 and response.mimetype == "text/html"
        assert "form-action 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["Cache-Control"] == "no-store"
        assert "<script>" not in response.get_data(as_text=True)
    html = client.get("/ui/batches/%22%3E%3Cb%3E").get_data(as_text=True)
    assert "<b>" not in html and 'data-batch-id="&#34;&gt;&lt;b&gt;"' in html
