"""The worker's end-of-job write survives a Redis blip and never loses side effects."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from jobgate import lifecycle


class NotInline:
    """A messenger whose broker is not the store's Redis (no message inside the script)."""

    inline = False


class FlakyStore:
    """A store whose finish_job fails ``failures`` times, having written on ``wrote_on``."""

    def __init__(self, failures: int, wrote_on: int | None = None) -> None:
        self.failures, self.wrote_on, self.calls = failures, wrote_on, 0
        self.written = False

    def finish_job(self, job_id, status, **fields):
        self.calls += 1
        if self.calls == self.wrote_on:
            self.written = True
        if self.calls <= self.failures:
            raise RedisConnectionError("blip")
        if self.written and self.calls != self.wrote_on:
            return None  # an earlier try recorded it
        self.written = True
        return {
            "job_id": job_id,
            "status": status,
            "callback_url": "https://x.example/h",
            "batch_id": None,
            "webhook_queued": False,
            "dispatched": [],
        }

    def job(self, job_id):
        return {"job_id": job_id, "status": "SUCCESS", "callback_url": "https://x.example/h"}


@pytest.fixture
def effects(monkeypatch):
    seen = []
    monkeypatch.setattr(
        lifecycle, "side_effects", lambda messenger, store, record, **_: seen.append(record)
    )
    return seen


def test_a_blip_is_retried_and_the_end_recorded_once(effects):
    store = FlakyStore(failures=2)
    assert lifecycle.finish_job_retrying(NotInline(), store, "j", "SUCCESS", delays=(0, 0, 0))
    assert store.calls == 3
    assert len(effects) == 1


def test_a_lost_reply_still_fires_the_side_effects(effects):
    # The first try wrote the end but its reply was lost: the retry finds it ended.
    store = FlakyStore(failures=1, wrote_on=1)
    assert not lifecycle.finish_job_retrying(NotInline(), store, "j", "SUCCESS", delays=(0, 0))
    assert [record["job_id"] for record in effects] == ["j"]


def test_an_outage_longer_than_the_retries_is_raised(effects):
    with pytest.raises(RedisConnectionError):
        lifecycle.finish_job_retrying(
            NotInline(), FlakyStore(failures=9), "j", "SUCCESS", delays=(0, 0)
        )
    assert effects == []


def test_already_ended_without_any_error_fires_nothing(effects):
    store = FlakyStore(failures=0, wrote_on=1)
    store.written = True
    store.wrote_on = None
    assert not lifecycle.finish_job_retrying(NotInline(), store, "j", "SUCCESS", delays=(0,))
    assert effects == []


def test_the_default_retries_outlast_a_sentinel_failover():
    """Sentinel's default down-after-milliseconds is 30 s, then an election: an end given
    up sooner is run again by the sweeper (the job ran twice for one failover)."""
    assert lifecycle.END_RETRY_FOR >= 45
    assert sum(lifecycle.END_RETRY_DELAYS) >= lifecycle.END_RETRY_FOR  # the budget decides


def test_retrying_stops_at_the_budget_whatever_the_delays_left(effects, monkeypatch):
    """Each failed try also spends redis-py's own retries: the budget bounds the whole,
    so a worker's warm shutdown is not held for minutes by one job's end."""
    clock = [0.0]
    monkeypatch.setattr(lifecycle.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(lifecycle.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    store = FlakyStore(failures=99)

    def slow_finish(*args, **kwargs):
        clock[0] += 4.0  # a try that fails after redis-py's own retries
        return FlakyStore.finish_job(store, *args, **kwargs)

    store.finish_job = slow_finish
    with pytest.raises(RedisConnectionError):
        lifecycle.finish_job_retrying(NotInline(), store, "j", "SUCCESS", budget=20.0)
    assert clock[0] <= 20.0 + 4.0  # the last try may start just inside the budget
    assert store.calls < len(lifecycle.END_RETRY_DELAYS)


class DownStore:
    def __init__(self):
        self.calls = 0

    def report_progress(self, job_id, info, meta):
        self.calls += 1
        raise RedisConnectionError("failing over")


class RunningTask:
    class request:
        id = "j1"

    def update_state(self, **_):
        raise AssertionError("a report Redis did not take goes nowhere else")


def test_a_progress_report_redis_cannot_take_does_not_fail_the_job(caplog, monkeypatch):
    from tasks import progress as module
    from tasks.progress import Progress

    monkeypatch.setattr(module, "COALESCE", 0.0)  # every report written at once
    store = DownStore()
    progress = Progress(RunningTask(), store)
    progress(1, 2, "half")
    progress(2, 2, "done")  # within the pause: Redis is not tried again
    assert [report["percent"] for report in progress.reports] == [50, 100]
    assert store.calls == 1
    assert caplog.text.count("progress not recorded") == 1
