"""The status page's dashboard and the jobs list's additions in headless Chromium, against
the real gateway, worker and receivers: workers and their pools, queue depth, the last
hour's SVG chart, failing and disabled endpoints, dead letters; and in the jobs list the
partner column (admins), the task filter, search by id and the batch view."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobgate.archive import Archiver
from jobgate.times import format_time
from tests.conftest import ADMIN_KEY
from tests.helpers import wait_for_status, wait_until
from tests.webhooks.conftest import Receiver

pytestmark = [pytest.mark.browser, pytest.mark.integration]

QUICK = {"task": "demo.sleep", "params": {"seconds": 0, "steps": 1}}


def rows(page, selector: str) -> list:
    return page.driver.find_elements("css selector", selector)


def texts(page, selector: str) -> list[str]:
    """The text of every element ``selector`` matches, read at once (rows are replaced
    on each refresh)."""
    script = "return [...document.querySelectorAll(arguments[0])].map((e) => e.textContent)"
    return page.driver.execute_script(script, selector)


def refreshed(page) -> None:
    """Click Refresh and wait until the dashboard has drawn the new answer."""
    loads = lambda: int(page.element("dash").get_attribute("data-loads") or 0)  # noqa: E731
    before = loads()
    page.element("dash-refresh").click()
    wait_until(lambda: loads() > before, 10, 0.05, "the dashboard refreshed")


def submit(client, partner: dict[str, Any], body: dict[str, Any]) -> str:
    response = client.post("/v1/jobs", json=body, headers=partner["headers"])
    assert response.status_code == 202, response.get_json()
    return response.get_json()["job_id"]


def test_dashboard_shows_workers_queues_chart_endpoints_and_dead_letters(
    page, app, client, partner, other_partner, admin_headers, worker
) -> None:
    svc = app.extensions["jobgate"]
    failing, fine = Receiver(), Receiver()
    delayed = ""
    try:
        failing.answer(*[503] * 20)
        created = client.post(
            "/v1/endpoints",
            json={"url": failing.url + "?token=tok-hidden", "event_types": ["job.succeeded"]},
            headers=partner["headers"],
        ).get_json()
        off = client.post(
            "/v1/endpoints", json={"url": fine.url + "/off"}, headers=other_partner["headers"]
        ).get_json()
        client.patch(
            f"/v1/endpoints/{off['id']}", json={"enabled": False}, headers=other_partner["headers"]
        )
        ran = submit(client, partner, QUICK)  # its event fails at the endpoint: 4 attempts
        delivered = submit(client, other_partner, {**QUICK, "callback_url": fine.url})
        later = format_time(datetime.now(UTC) + timedelta(hours=1))
        delayed = submit(client, partner, {**QUICK, "run_at": later})
        dead_id = "dash-" + uuid.uuid4().hex[:8]
        Archiver(svc.store, svc.db, consumer="tests").set_aside(
            [(("job", dead_id), ValueError("refused by the browser test"))]
        )
        wait_for_status(client, ran, partner["headers"], "SUCCESS")
        wait_for_status(client, delivered, other_partner["headers"], "SUCCESS")
        fine.wait_for(1)
        failing.wait_for(4)

        page.sign_in(ADMIN_KEY, path="/ui/dashboard")
        assert page.visible("nav-dashboard")
        page.wait_visible("dash")

        def shown(selector: str) -> list[str]:
            refreshed(page)
            return texts(page, selector)

        # Workers: the session's worker is a job pool of 2 and a delivery pool.
        cells = """return [...document.querySelectorAll('#workers-body tr[data-alive="true"]')]
            .map((tr) => [...tr.cells].map((td) => td.textContent))"""

        def both_pools() -> list[list[str]]:
            refreshed(page)
            nodes = page.driver.execute_script(cells)
            return nodes if {node[1] for node in nodes} >= {"jobs", "webhooks"} else []

        nodes = wait_until(both_pools, 20, 0.3, "both pools online")
        pools = {node[1]: node for node in nodes}
        assert pools["jobs"][2] == "2" and pools["jobs"][4] == "online"  # a job pool of 2
        assert int(pools["webhooks"][2]) > 0 and pools["webhooks"][0] != pools["jobs"][0]
        # Queue depth of the partner: its delayed job.
        queue = f'#queues-body tr[data-partner-id="{partner["id"]}"] td'
        wait_until(lambda: shown(queue), 10, 0.3, "the partner's queue")
        cells = texts(page, queue)
        assert cells[1:] == ["0", "0", "1", "1"] and "acme" in cells[0]
        # Failing and disabled endpoints, URL without its token.
        [bad] = wait_until(
            lambda: shown(f'#bad-endpoints-body tr[data-endpoint-id="{created["id"]}"]'),
            20,
            0.3,
            "the failing endpoint",
        )
        assert "failing since" in bad and failing.url in bad
        [disabled] = texts(page, f'#bad-endpoints-body tr[data-endpoint-id="{off["id"]}"]')
        assert "disabled" in disabled
        # The dead letter, newest first, and the whole list on demand.
        letter = texts(page, "#dead-body tr")[0]
        assert dead_id in letter and "refused by the browser test" in letter
        page.element("dead-all").click()
        wait_until(lambda: not page.visible("dead-all"), 10, 0.05, "the full list")
        assert dead_id in page.text("dead-body")

        # The chart: bars of jobs ended in the last hour, the success rate's points.
        read_chart = """
            const svg = document.getElementById("activity-svg");
            const count = (s) => [...svg.querySelectorAll(s)];
            return {
              ended: Number(svg.dataset.ended),
              rate: svg.dataset.successRate,
              bars: count("rect.bar-ended").map((b) => Number(b.dataset.count)),
              started: count("rect.bar-started").length,
              dots: count("circle.rate-dot").length,
            };
        """

        def chart() -> Any:
            refreshed(page)
            drawn = page.driver.execute_script(read_chart)
            return drawn if drawn["ended"] >= 2 and drawn["dots"] else None

        drawn = wait_until(chart, 20, 0.3, "the chart with this test's jobs")
        assert sum(drawn["bars"]) == drawn["ended"] and drawn["started"] >= 1
        assert 0 < float(drawn["rate"]) < 1  # some delivered, some failed
        assert "deliveries succeeded" in page.text("activity-totals")
        # The whole page for docs/img/dashboard.png (copied from tests/artifacts).
        page.driver.execute_script("window.scrollTo(0, 0)")
        page.driver.set_window_size(1100, 1250)
        try:
            page.screenshot("dashboard")
        finally:
            page.driver.set_window_size(1100, 900)

        source = page.driver.page_source
        assert "tok-hidden" not in source and "whsec_" not in source
        assert partner["api_key"] not in source and ADMIN_KEY not in source
    finally:
        if delayed:
            client.post(
                f"/v1/jobs/{delayed}/revoke", json={"reason": "over"}, headers=admin_headers
            )
        failing.stop()
        fine.stop()


def test_a_partner_is_told_the_dashboard_is_for_admins(page, partner) -> None:
    page.sign_in(partner["api_key"], path="/ui/dashboard")
    page.wait_visible("dash-error")
    assert "for admins" in page.text("dash-error")
    assert not page.visible("nav-dashboard") and not page.visible("dash")


def test_jobs_list_partner_column_task_filter_search_and_batch_view(
    page, client, partner, other_partner, worker
) -> None:
    sleep = submit(client, partner, QUICK)
    failed = submit(client, other_partner, {"task": "demo.fail", "params": {}})
    batch = client.post(
        "/v1/batches", json={"jobs": [QUICK, QUICK]}, headers=partner["headers"]
    ).get_json()
    members = batch["job_ids"]
    wait_for_status(client, failed, other_partner["headers"], "FAILURE")

    page.sign_in(ADMIN_KEY)
    assert page.visible("col-partner")
    [row] = wait_until(lambda: texts(page, f'tr[data-job-id="{sleep}"]'), 10, 0.05, "the row")
    assert partner["id"] in row  # the partner column
    [member] = texts(page, f'tr[data-job-id="{members[0]}"]')
    assert batch["batch_id"][:8] in member  # the batch column

    # Task filter: only demo.fail jobs.
    page.element("task-filter").send_keys("demo.fail\n")
    page.element("refresh").click()

    def only_failures() -> bool:
        listed = texts(page, "#jobs-body tr")
        return bool(listed) and all("demo.fail" in text for text in listed)

    wait_until(only_failures, 10, 0.05, "the task filter")
    assert rows(page, f'tr[data-job-id="{failed}"]')
    assert other_partner["id"] in page.text("jobs-body")
    page.screenshot("jobs-list-admin")

    # Search by job id: that job alone.
    page.element("job-search-id").send_keys(sleep)
    page.element("job-search-submit").click()
    ids = "return [...document.querySelectorAll(arguments[0])].map((e) => e.dataset.jobId)"
    wait_until(
        lambda: page.driver.execute_script(ids, "#jobs-body tr") == [sleep],
        10,
        0.05,
        "the job found",
    )
    assert page.visible("job-search-clear")
    # An unknown id says so.
    page.element("job-search-id").clear()
    page.element("job-search-id").send_keys("no-such-job")
    page.element("job-search-submit").click()
    wait_until(lambda: page.visible("list-error"), 10, 0.05, "the not-found message")
    assert "No job or batch" in page.text("list-error")

    # A batch id opens the batch view: counts and its members, linked.
    for job_id in members:
        wait_for_status(client, job_id, partner["headers"], "SUCCESS")
    page.element("job-search-id").clear()
    page.element("job-search-id").send_keys(batch["batch_id"])
    page.element("job-search-submit").click()
    wait_until(
        lambda: page.driver.current_url.endswith(f"/ui/batches/{batch['batch_id']}"),
        10,
        0.05,
        "the batch page",
    )
    page.wait_visible("batch")
    wait_until(lambda: "2 succeeded" in page.text("batch-counts"), 10, 0.05, "batch counts")
    assert page.driver.execute_script(ids, "#batch-body tr") == members
    link = rows(page, f'#batch-body tr[data-job-id="{members[0]}"] a')[0]
    assert link.get_attribute("href").endswith(f"/ui/jobs/{members[0]}")


def test_partners_see_no_partner_column(page, client, partner) -> None:
    job_id = submit(client, partner, QUICK)
    page.sign_in(partner["api_key"])
    row = wait_until(lambda: rows(page, f'tr[data-job-id="{job_id}"]'), 10, 0.05, "the row")[0]
    assert not page.visible("col-partner")
    assert len(row.find_elements("css selector", "td")) == 6  # no partner cell
    assert partner["id"] not in row.text
