"""The status page end to end: real gateway, real worker, headless Chromium."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ADMIN_KEY
from tests.helpers import wait_for_status, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def submit(client, partner: dict[str, Any], task: str, params: dict[str, Any]) -> str:
    response = client.post(
        "/v1/jobs", json={"task": task, "params": params}, headers=partner["headers"]
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()["job_id"]


def has_events_route(app) -> bool:
    return any(rule.rule.endswith("/events") for rule in app.url_map.iter_rules())


def test_wrong_key_shows_a_clear_error_and_stores_nothing(page):
    page.sign_in("not-a-real-key")

    assert page.visible("login-error")
    assert "not valid" in page.text("login-error")
    assert not page.visible("content")
    assert page.driver.execute_script("return sessionStorage.length") == 0


def test_progress_bar_rises_live_and_ends_with_the_result(page, app, client, partner, worker):
    job_id = submit(client, partner, "demo.sleep", {"seconds": 2.5, "steps": 10})
    page.sign_in(partner["api_key"])
    row = wait_until(
        lambda: page.driver.find_elements("css selector", f'tr[data-job-id="{job_id}"] a'),
        10,
        0.05,
        "the job in the list",
    )
    assert page.text("who") == "Signed in as partner"
    page.screenshot("jobs-list")
    row[0].click()
    wait_until(
        lambda: page.driver.current_url.endswith(f"/ui/jobs/{job_id}"), 10, 0.05, "the job page"
    )

    seen: list[int] = []
    running_shot = []

    def finished() -> bool:
        value = page.element("progress").get_attribute("aria-valuenow")
        seen.append(int(value))
        if 0 < seen[-1] < 100 and not running_shot:
            running_shot.append(page.screenshot("status-page-running"))
        return page.text("job-status") == "SUCCESS"

    wait_until(finished, 30, 0.05, "the page to show SUCCESS")
    # The page may have rendered between the last two reads: read the bar once more.
    seen.append(int(page.element("progress").get_attribute("aria-valuenow")))

    assert any(0 < value < 100 for value in seen), f"no intermediate progress seen: {seen}"
    assert seen == sorted(seen), f"the bar went backwards: {seen}"
    assert seen[-1] == 100
    assert page.element("progress-fill").get_attribute("style") == "width: 100%;"
    assert '"slept": 2.5' in page.text("job-result-json")
    assert not page.visible("job-failure")
    assert not page.visible("revoke-box"), "partners must not see the revoke button"
    expected = "event stream" if has_events_route(app) else "polling"
    assert expected in page.driver.execute_script(
        "return document.getElementById('live-mode').dataset.used"
    )
    wait_until(
        lambda: page.driver.execute_script(
            "const bar = document.getElementById('progress');"
            "return bar.firstElementChild.offsetWidth === bar.clientWidth"
        ),
        5,
        0.05,
        "the bar's fill animation to end",
    )
    page.screenshot("status-page")


def test_page_falls_back_to_polling_when_the_event_stream_is_unavailable(
    page, client, partner, worker
):
    job_id = submit(client, partner, "demo.sleep", {"seconds": 2, "steps": 8})
    page.driver.execute_cdp_cmd("Network.enable", {})
    page.driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/events*"]})
    try:
        page.sign_in(partner["api_key"], f"/ui/jobs/{job_id}")
        seen: list[int] = []

        def finished() -> bool:
            seen.append(int(page.element("progress").get_attribute("aria-valuenow")))
            return page.text("job-status") == "SUCCESS"

        wait_until(finished, 30, 0.05, "the page to show SUCCESS while polling")
    finally:
        page.driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
        page.driver.execute_cdp_cmd("Network.disable", {})

    assert page.element("live-mode").get_attribute("data-used") == "polling"
    assert any(0 < value < 100 for value in seen), f"no intermediate progress seen: {seen}"
    assert seen == sorted(seen), f"the bar went backwards: {seen}"
    assert '"steps": 8' in page.text("job-result-json")


def test_failed_job_shows_its_error_message(page, client, partner, worker):
    job_id = submit(client, partner, "demo.fail", {"message": "Disk quota exceeded (demo)"})
    page.sign_in(partner["api_key"], f"/ui/jobs/{job_id}")

    wait_until(lambda: page.text("job-status") == "FAILURE", 20, 0.05, "FAILURE on the page")
    assert page.visible("job-failure")
    assert page.text("job-error-message") == "Disk quota exceeded (demo)"
    assert not page.visible("job-result")


def test_admin_revokes_a_running_job_from_the_page(page, client, partner, admin_headers, worker):
    job_id = submit(client, partner, "demo.sleep", {"seconds": 60, "steps": 60})
    page.sign_in(ADMIN_KEY, f"/ui/jobs/{job_id}")
    assert page.text("who") == "Signed in as admin"
    wait_until(lambda: page.text("job-status") == "PROCESSING", 20, 0.05, "PROCESSING")

    page.wait_visible("revoke").click()
    page.wait_visible("revoke-reason").send_keys("Stopped from the browser test")
    page.element("revoke-confirm").click()

    wait_until(lambda: page.text("job-status") == "REVOKED", 20, 0.05, "REVOKED on the page")
    assert "Stopped from the browser test" in page.text("job-revocation")
    assert not page.visible("revoke-box")
    view = wait_for_status(client, job_id, admin_headers, ("REVOKED",), timeout=5)
    assert view["revocation"]["reason"] == "Stopped from the browser test"


def test_another_partners_job_is_not_shown(page, client, partner, other_partner, worker):
    job_id = submit(client, partner, "demo.sleep", {"seconds": 0, "steps": 1})
    page.sign_in(other_partner["api_key"], f"/ui/jobs/{job_id}")

    page.wait_visible("job-error")
    assert "No job with this id" in page.text("job-error")
    assert not page.visible("job")
