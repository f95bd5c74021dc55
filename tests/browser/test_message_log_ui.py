"""The message log on the status page (issue 28), in headless Chromium against the real
gateway, worker and receivers: each attempt's request and response (collapsible) on the
job page with Redeliver, and on the endpoints page with edit, rotate secret,
disable/enable and delete."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.helpers import wait_until
from tests.webhooks.conftest import Received, Receiver, Reply

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def rows(page, selector: str) -> list:
    return page.driver.find_elements("css selector", selector)


def opened(page, row) -> dict[str, str]:
    """Open an attempt row's request and response; their texts as shown."""
    details = row.find_element("css selector", "details.exchange")
    if not details.get_attribute("open"):
        details.find_element("css selector", "summary").click()

    def part(name: str, what: str) -> str:
        found = details.find_elements("css selector", f'[data-part="{name}"] pre.exchange-{what}')
        return found[0].get_attribute("textContent") if found else ""

    wait_until(lambda: details.find_element("css selector", "pre").is_displayed(), 5, 0.05, "open")
    return {
        "request_headers": part("request", "headers"),
        "request_body": part("request", "body"),
        "response_headers": part("response", "headers"),
        "response_body": part("response", "body"),
        "text": details.get_attribute("textContent"),
    }


def shows_request_of(shown: dict[str, str], received: Received) -> None:
    """The page shows the request the receiver got: every header, and the body."""
    for name, value in received.headers.items():
        assert any(
            line.lower() == f"{name}: {value}".lower()
            for line in shown["request_headers"].splitlines()
        ), (name, shown["request_headers"])
    assert shown["request_body"] == received.body.decode()


def fresh_partner(client, admin_headers: dict[str, str]) -> dict[str, Any]:
    created = client.post(
        "/v1/partners", json={"name": f"ui-{uuid.uuid4().hex[:6]}"}, headers=admin_headers
    ).get_json()
    return {**created, "headers": {"Authorization": f"Bearer {created['api_key']}"}}


def test_the_job_page_shows_each_attempts_request_and_response_and_redelivers(
    page, client, admin_headers, worker
) -> None:
    receiver = Receiver()
    try:
        partner = fresh_partner(client, admin_headers)
        receiver.answer(
            Reply(200, (("X-Receipt", "r-1"),), b"first <b>answer</b>"),
            Reply(202, (("X-Receipt", "r-2"),), b"second answer"),
        )
        response = client.post(
            "/v1/jobs",
            json={"task": "demo.sleep", "params": {"seconds": 0}, "callback_url": receiver.url},
            headers=partner["headers"],
        )
        job_id = response.get_json()["job_id"]
        page.sign_in(partner["api_key"], path=f"/ui/jobs/{job_id}")
        page.wait_visible("deliveries-box", 20)
        [first] = wait_until(
            lambda: rows(page, '#deliveries-body tr[data-outcome="delivered"]'),
            20,
            0.05,
            "the delivered attempt",
        )
        [received] = receiver.wait_for(1)
        received.verify(partner["webhook_secret"])
        shown = opened(page, first)
        shows_request_of(shown, received)
        assert "X-Receipt: r-1" in shown["response_headers"]
        assert shown["response_body"] == "first <b>answer</b>"  # text, never markup
        assert not rows(page, "#deliveries-body b")

        page.element("redeliver").click()
        wait_until(
            lambda: len(rows(page, "#deliveries-body tr[data-attempt]")) == 2,
            20,
            0.05,
            "the redelivered attempt listed",
        )
        again = rows(page, '#deliveries-body tr[data-attempt="2"]')[0]
        assert "(resent)" in again.text
        [_, resent] = receiver.wait_for(2)
        assert resent.webhook_id == received.webhook_id
        shown_again = opened(page, again)
        shows_request_of(shown_again, resent)
        assert "X-Receipt: r-2" in shown_again["response_headers"]
        assert shown_again["response_body"] == "second answer"
        assert "Queued again" in page.text("redeliver-result")
        page.screenshot("message-log-job")
    finally:
        receiver.stop()


def endpoint(client, partner, endpoint_id: str) -> tuple[int, dict[str, Any] | None]:
    found = client.get(f"/v1/endpoints/{endpoint_id}", headers=partner["headers"])
    return found.status_code, found.get_json()


def test_the_endpoints_page_shows_attempts_and_edits_rotates_disables_and_deletes(
    page, client, admin_headers, worker
) -> None:
    receiver = Receiver()
    try:
        partner = fresh_partner(client, admin_headers)
        created = client.post(
            "/v1/endpoints",
            json={"url": receiver.url, "headers": {"X-Tenant": "acme"}},
            headers=partner["headers"],
        ).get_json()
        endpoint_id = created["id"]
        page.sign_in(partner["api_key"], path="/ui/endpoints")
        [row] = wait_until(lambda: rows(page, "tr[data-endpoint-id]"), 10, 0.05, "the row")
        row.find_element("css selector", "button").click()
        page.wait_visible("detail")

        # A ping: its request and response shown with the attempt.
        receiver.answer(Reply(200, (("X-Pong", "yes"),), b'{"pong":true}'))
        page.element("detail-test").click()
        wait_until(lambda: "Test delivered" in page.text("detail-test-result"), 15, 0.05, "ping")
        [ping] = receiver.wait_for(1)
        ping.verify(created["webhook_secret"])
        [attempt] = wait_until(lambda: rows(page, "#attempts-body tr"), 10, 0.05, "the attempt")
        shown = opened(page, attempt)
        shows_request_of(shown, ping)
        assert "X-Tenant: acme" in shown["request_headers"]
        assert "X-Pong: yes" in shown["response_headers"]
        assert shown["response_body"] == '{"pong":true}'

        # Edit: URL kept, description and events changed.
        page.element("manage-edit").click()
        page.wait_visible("manage-form")
        assert page.element("manage-url").get_attribute("value") == receiver.url
        page.element("manage-events").send_keys("job.failed, job.succeeded")
        page.element("manage-description").send_keys("orders")
        page.element("manage-save").click()
        wait_until(
            lambda: (
                endpoint(client, partner, endpoint_id)[1]["event_types"]
                == ["job.failed", "job.succeeded"]
            ),
            10,
            0.05,
            "the edit saved",
        )
        assert endpoint(client, partner, endpoint_id)[1]["description"] == "orders"
        wait_until(lambda: page.text("manage-result") == "Saved.", 10, 0.05, "saved")

        # Rotate: the new secret is shown once, and it signs the next ping.
        page.element("manage-rotate").click()
        page.wait_visible("manage-secret-box")
        secret = page.text("manage-secret")
        assert secret.startswith("whsec_") and secret != created["webhook_secret"]
        page.secrets.append(secret)  # the no-leak checks cover it
        # (one ping a second per endpoint: asked again until that second has passed)
        pinged = wait_until(
            lambda: (
                answer
                if (
                    answer := client.post(
                        f"/v1/endpoints/{endpoint_id}/test", headers=partner["headers"]
                    )
                ).status_code
                != 429
                else None
            ),
            10,
            0.1,
            "a second ping taken",
        )
        assert pinged.status_code == 200, pinged.get_json()
        receiver.wait_for(2)[1].verify(secret)

        # Disable, then Enable again.
        page.element("manage-disable").click()
        wait_until(
            lambda: endpoint(client, partner, endpoint_id)[1]["enabled"] is False,
            10,
            0.05,
            "disabled",
        )
        page.wait_visible("detail-enable")
        wait_until(lambda: not page.visible("manage-disable"), 10, 0.05, "Disable hidden")
        assert page.text("manage-result") == "Disabled."
        page.element("detail-enable").click()
        wait_until(
            lambda: endpoint(client, partner, endpoint_id)[1]["enabled"] is True,
            10,
            0.05,
            "enabled again",
        )
        page.wait_visible("manage-disable")
        wait_until(lambda: page.text("manage-result") == "", 10, 0.05, "no stale Disabled.")
        page.screenshot("message-log-endpoints")

        # Delete, confirmed.
        page.element("manage-delete").click()
        page.wait_visible("manage-delete-confirm").click()
        wait_until(lambda: endpoint(client, partner, endpoint_id)[0] == 404, 10, 0.05, "gone")
        wait_until(lambda: not rows(page, "tr[data-endpoint-id]"), 10, 0.05, "the row gone")
        assert not page.visible("detail")
    finally:
        receiver.stop()
