"""The status page's Endpoints view in headless Chromium: list, add (secret shown once),
test, attempts and recover, against a real receiver and worker."""

from __future__ import annotations

import pytest

from tests.conftest import ADMIN_KEY
from tests.helpers import wait_until
from tests.webhooks.conftest import Receiver

pytestmark = [pytest.mark.browser, pytest.mark.integration]
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def rows(page, selector: str) -> list:
    return page.driver.find_elements("css selector", selector)


def test_add_test_read_attempts_and_recover(page, client, partner, worker) -> None:
    receiver = Receiver()
    try:
        page.sign_in(partner["api_key"], path="/ui/endpoints")
        assert page.visible("endpoints-empty")
        page.element("add-url").send_keys(receiver.url)
        page.element("add-events").send_keys("job.succeeded")
        page.element("add-submit").click()
        page.wait_visible("add-secret-box")
        secret = page.text("add-secret")
        assert secret.startswith("whsec_")
        page.secrets.append(secret)  # the no-leak checks cover the shown secret too
        [row] = wait_until(lambda: rows(page, "tr[data-endpoint-id]"), 10, 0.05, "the row")
        assert receiver.url in row.text and "job.succeeded" in row.text
        page.wait_visible("detail")

        page.element("detail-test").click()
        wait_until(lambda: "Test delivered" in page.text("detail-test-result"), 15, 0.05, "ping")
        [ping] = receiver.requests
        assert ping.verify(secret)["type"] == "ping"
        wait_until(lambda: rows(page, "#attempts-body tr"), 10, 0.05, "the ping attempt")

        # An outage: every attempt of a job's event fails; Recover sends it again.
        receiver.answer(*[503] * 4)
        client.post(
            "/v1/jobs",
            json={"task": "demo.sleep", "params": {"seconds": 0, "steps": 1}},
            headers=partner["headers"],
        )
        receiver.wait_for(5)

        def failed_shown() -> list:
            page.element("attempts-refresh").click()
            return rows(page, '#attempts-body tr[data-outcome="failed"]')

        wait_until(failed_shown, 20, 0.3, "the failed attempt listed")
        page.screenshot("endpoints-page")
        page.element("recover-submit").click()
        wait_until(
            lambda: page.text("recover-result") == "1 message queued again.",
            10,
            0.05,
            "the recover answer",
        )
        [resent] = receiver.wait_for(6)[5:]
        assert resent.webhook_id == receiver.requests[1].webhook_id
        assert resent.verify(secret)["type"] == "job.succeeded"
        page.element("attempts-filter").send_keys("delivered")
        wait_until(
            lambda: (
                len(rows(page, '#attempts-body tr[data-outcome="delivered"]')) == 2
                and not rows(page, '#attempts-body tr[data-outcome="failed"]')
            ),
            10,
            0.05,
            "the delivered filter",
        )
    finally:
        receiver.stop()


def test_an_admin_is_not_offered_the_add_form_the_api_refuses(page, client, partner) -> None:
    """POST /v1/endpoints answers 403 to admins: the page shows them no form to fill in
    (a newcomer signed in with the admin key was offered one and got the refusal)."""
    refused = client.post(
        "/v1/endpoints", json={"url": "http://127.0.0.1:9/x"}, headers=ADMIN
    ).status_code
    assert refused == 403
    page.sign_in(ADMIN_KEY, path="/ui/endpoints")
    wait_until(lambda: page.visible("add-admin-note"), 10, 0.05, "the admin's note")
    assert not page.visible("add-form")
    assert not page.element("add-submit").is_displayed()
    assert page.console_errors() == []


def test_a_partner_is_offered_the_add_form(page, partner) -> None:
    page.sign_in(partner["api_key"], path="/ui/endpoints")
    wait_until(lambda: page.visible("add-form"), 10, 0.05, "the add form")
    assert not page.visible("add-admin-note")
