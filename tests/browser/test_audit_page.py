"""The status page's audit log in headless Chromium: an admin sees every admin action
with its actor; a partner is not offered the view and is refused its data."""

from __future__ import annotations

import pytest

from tests.conftest import ADMIN_KEY
from tests.helpers import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.integration]
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def rows(page) -> list:
    return page.driver.find_elements("css selector", "#audit-body tr")


def test_an_admin_reads_the_audit_log_newest_first(page, client, partner) -> None:
    disabled = client.post(f"/v1/partners/{partner['id']}/disable", headers=ADMIN)
    assert disabled.status_code == 200
    page.sign_in(ADMIN_KEY, path="/ui/audit")
    assert page.visible("nav-audit")
    first = wait_until(lambda: rows(page), 10, 0.05, "the audit rows")[0]
    cells = [cell.text for cell in first.find_elements("css selector", "td")]
    assert cells[1].startswith("key:")  # the unnamed admin key, by its fingerprint
    assert cells[2] == "POST /v1/partners/<partner_id>/disable"
    assert cells[3] == partner["id"]
    texts = " ".join(row.text for row in rows(page))
    assert "POST /v1/partners" in texts  # the partner's creation, further down
    assert ADMIN_KEY not in texts
    page.screenshot("audit-page")


def test_a_partner_is_not_offered_the_audit_log_and_is_refused_it(page, partner) -> None:
    page.sign_in(partner["api_key"], path="/ui/audit")
    assert not page.visible("nav-audit")
    page.wait_visible("audit-error")
    assert "admin" in page.text("audit-error")
    assert not rows(page)


def test_more_appends_the_next_page_of_the_audit_log(page, client, partner) -> None:
    """The paged lists of the UI (jobs, attempts, dead letters, audit) share one loader:
    "More" appends the next page and hides once the API gives no next cursor."""
    for _ in range(60):  # past the page of 50, whatever the earlier tests left
        changed = client.patch(
            f"/v1/partners/{partner['id']}", json={"limits": {"weight": 2}}, headers=ADMIN
        )
        assert changed.status_code == 200, changed.get_json()
    page.sign_in(ADMIN_KEY, path="/ui/audit")
    wait_until(lambda: len(rows(page)) == 50, 10, 0.05, "the first page")
    assert page.visible("audit-more")
    page.element("audit-more").click()
    wait_until(lambda: len(rows(page)) > 50, 10, 0.05, "the next page appended")
    ids = [row.get_attribute("data-audit-id") for row in rows(page)]
    assert len(ids) == len(set(ids))  # appended, not repeated
    assert ids == sorted(ids, key=int, reverse=True)  # newest first, across pages
    while page.visible("audit-more"):
        page.element("audit-more").click()
        wait_until(lambda n=len(ids): len(rows(page)) > n or not page.visible("audit-more"), 10)
        ids = [row.get_attribute("data-audit-id") for row in rows(page)]
    assert len(ids) == len(set(ids)) >= 61
