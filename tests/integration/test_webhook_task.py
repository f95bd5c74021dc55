"""The delivery task's logic without a worker: retry classification, bookkeeping, claims.

``run_attempt`` runs in-process against the real Redis test db with a stand-in Celery app
that records what it would queue; ``responses`` answers the HTTP side (nothing is sent).
"""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import responses

from config import Settings
from jobgate.db import Database
from jobgate.events import delivery_task_id, webhook_id
from jobgate.messages import DELIVER_TASK
from jobgate.partners import Partners
from jobgate.signing import generate_secret
from jobgate.ssrf import REFUSED
from jobgate.store import Store, secrets_of
from jobgate.webhooks import attempt as attempts
from jobgate.webhooks.attempt import Call, Sender, run_attempt
from jobgate.webhooks.ledger import Deliveries
from jobgate.webhooks.policy import plan
from tasks.app import make_celery

URL = "http://127.0.0.1:9009/hooks"


class FakeApp(SimpleNamespace):
    """Settings and store like JobgateCelery, and a messenger that only records."""

    inline = False
    webhooks_queue = "webhooks"

    @property
    def messenger(self) -> FakeApp:
        return self

    def send(self, name: str, **options: Any) -> None:
        self.sent.append((name, options))


def attempt(app: FakeApp, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
    context = {name: kwargs.pop(name) for name in ("node", "endpoints") if name in kwargs}
    sender = Sender(
        app.settings,
        app.store,
        app.messenger,
        partner_of=kwargs.pop("partner_of", app.partners.get),
        **context,
    )
    return run_attempt(sender, Call(*args, **kwargs))


def scheduled(app: FakeApp) -> list[tuple[dict[str, Any], float]]:
    """(entry, due time) of every retry the attempts scheduled on the due set."""
    return [
        (json.loads(row), at)
        for row, at in app.store.redis.zrange(app.store.due_key, 0, -1, withscores=True)
    ]


@pytest.fixture
def fake_app(redis_url: str, redis_client: Any, database_url: str) -> FakeApp:
    settings = Settings(
        redis_url=redis_url,
        callback_allow_http=True,
        callback_allowlist="127.0.0.0/8",
        webhook_retry_delays=(0.2, 0.5, 1.0),
        webhook_timeout=2.0,
        key_prefix="unit-" + uuid.uuid4().hex[:8],
    )
    store = Store(redis_client, prefix=settings.key_prefix, retention=600)
    partners = Partners(store, Database(database_url))
    return FakeApp(settings=settings, store=store, partners=partners, sent=[])


def make_job(app: FakeApp, callback_url: str = URL) -> str:
    partner, _ = app.partners.create("acme", generate_secret())
    job_id = str(uuid.uuid4())
    app.store.create_job(
        {
            "job_id": job_id,
            "task_id": job_id,
            "task": "demo.sleep",
            "partner_id": partner["id"],
            "callback_url": callback_url,
            "created_at": "2024-01-01T00:00:00.000Z",
        }
    )
    assert app.store.finish_job(job_id, "SUCCESS", result={"ok": True})
    return job_id


@pytest.mark.parametrize(
    ("answer", "state", "retries"),
    [
        (200, "delivered", False),
        (204, "delivered", False),
        (500, "retrying", True),
        (503, "retrying", True),
        (408, "retrying", True),
        (429, "retrying", True),
        (400, "retrying", True),
        (404, "retrying", True),
        (301, "retrying", True),
        (410, "failed", False),
    ],
)
def test_status_decides_state_and_retry(
    fake_app: FakeApp, answer: int, state: str, retries: bool
) -> None:
    job_id = make_job(fake_app)
    started = time.time()
    with responses.RequestsMock() as rsps:
        rsps.post(URL, status=answer, headers={"Location": "https://elsewhere.example/"})
        entry = attempt(fake_app, "job", job_id, "job.succeeded")
    assert entry is not None and entry["status_code"] == answer
    record = fake_app.store.job(job_id)
    assert (record["webhook_state"], record["webhook_attempts"]) == (state, "1")
    assert fake_app.sent == []  # a retry is scheduled on the due set, never sent ahead
    due = scheduled(fake_app)
    assert bool(due) == retries
    open_ids = fake_app.store.redis.zrange(fake_app.store.open_key, 0, -1)
    if retries:
        [(spec, at)] = due
        assert spec["task"] == DELIVER_TASK and spec["queue"] == "webhooks"
        assert spec["args"] == ["job", job_id, "job.succeeded"]
        assert spec["kwargs"] == {"retry": 1, "chain": "auto"}
        assert 0.16 <= at - started <= 0.24 + (time.time() - started)  # 0.2 s +- 20 %
        assert entry["next_attempt_at"] is not None
        # The next attempt is open until it is recorded; this one is closed.
        assert open_ids == [delivery_task_id("job", job_id, "job.succeeded", "auto", 1)]
        assert spec["id"] == open_ids[0]
    else:
        assert open_ids == []


@pytest.mark.parametrize(
    "error",
    [
        requests.ConnectionError("refused"),
        requests.ConnectTimeout("slow"),
        requests.ReadTimeout("slow"),
    ],
)
def test_transport_errors_are_retried(fake_app: FakeApp, error: Exception) -> None:
    job_id = make_job(fake_app)
    with responses.RequestsMock() as rsps:
        rsps.post(URL, body=error)
        entry = attempt(fake_app, "job", job_id, "job.succeeded")
    assert entry["status_code"] is None and entry["error"]
    assert fake_app.store.job(job_id)["webhook_state"] == "retrying"
    assert len(scheduled(fake_app)) == 1


def test_retry_after_sets_the_countdown(fake_app: FakeApp) -> None:
    job_id = make_job(fake_app)
    with responses.RequestsMock() as rsps:
        rsps.post(URL, status=429, headers={"Retry-After": "7"})
        attempt(fake_app, "job", job_id, "job.succeeded")
        recorded = time.time()
    [(_, at)] = scheduled(fake_app)
    assert recorded + 6.5 <= at <= recorded + 7.0


def test_last_retry_failing_makes_the_delivery_failed(fake_app: FakeApp) -> None:
    job_id = make_job(fake_app)
    with responses.RequestsMock() as rsps:
        rsps.post(URL, status=500)
        entry = attempt(fake_app, "job", job_id, "job.succeeded", retry=3)
    assert fake_app.sent == [] and scheduled(fake_app) == []
    assert (entry["next_attempt_at"], entry["outcome"]) == (None, "failed")
    assert fake_app.store.job(job_id)["webhook_state"] == "failed"


def test_every_attempt_sends_the_stored_body_under_one_id(fake_app: FakeApp) -> None:
    job_id = make_job(fake_app)
    with responses.RequestsMock() as rsps:
        rsps.post(URL, status=500)
        attempt(fake_app, "job", job_id, "job.succeeded")
        fake_app.store.redis.hset(
            fake_app.store.key("job", job_id), "result", json.dumps({"changed": True})
        )
        attempt(fake_app, "job", job_id, "job.succeeded", retry=1)
        first, second = (call.request for call in rsps.calls)
    assert first.body == second.body
    assert (
        first.headers["webhook-id"]
        == second.headers["webhook-id"]
        == webhook_id(job_id, "job.succeeded")
    )
    assert json.loads(first.body)["data"]["result"] == {"ok": True}


def make_batch(app: FakeApp) -> str:
    """A completed batch of one finished member, with a callback."""
    partner, _ = app.partners.create("acme", generate_secret())
    batch_id, job_id = "bat_" + uuid.uuid4().hex[:20], str(uuid.uuid4())
    app.store.create_batch(
        {
            "batch_id": batch_id,
            "partner_id": partner["id"],
            "callback_url": URL,
            "created_at": "2024-01-01T00:00:00.000Z",
            "finished_at": "2024-01-01T00:00:01.000Z",
            "total": 1,
            "completed": 1,
            "succeeded": 1,
            "failed": 0,
            "revoked": 0,
            "metadata": "{}",
        },
        [{"job_id": job_id, "task_id": job_id, "task": "demo.sleep", "batch_id": batch_id}],
    )
    assert app.store.finish_job(job_id, "SUCCESS", result={"ok": True})
    return batch_id


@pytest.mark.parametrize(
    ("kind", "event"), [("job", "job.succeeded"), ("batch", "batch.completed")]
)
def test_the_first_body_is_stored_before_the_send_unless_any_attempt_builds_it_again(
    fake_app: FakeApp, kind: str, event: str
) -> None:
    """A job's body is a function of its record, so the attempt stores it with its record
    (one round trip fewer). A batch's reads its members as they are now, and they leave
    Redis once archived: it is stored before it is sent, so a retry after a crash between
    the send and the record sends the same bytes."""
    subject_id = make_job(fake_app) if kind == "job" else make_batch(fake_app)
    key = Deliveries(fake_app.store).body_key(subject_id, event)
    stored_at_send = []

    def answer(request: Any) -> tuple[int, dict[str, str], str]:
        stored_at_send.append(fake_app.store.redis.get(key))
        return 200, {}, ""

    with responses.RequestsMock() as rsps:
        rsps.add_callback(responses.POST, URL, callback=answer)
        assert attempt(fake_app, kind, subject_id, event)["outcome"] == "delivered"
        sent = rsps.calls[0].request.body
    sent = sent.decode() if isinstance(sent, bytes) else sent
    assert stored_at_send == [None if kind == "job" else sent]
    assert fake_app.store.redis.get(key) == sent


def test_a_late_first_attempt_sends_the_body_of_the_moment_the_job_ended(
    fake_app: FakeApp,
) -> None:
    """The event's ``timestamp`` is the job's ``finished_at`` even when the first attempt
    runs well after the end (a backlog, a stopped delivery pool)."""
    job_id = make_job(fake_app)
    finished_at = fake_app.store.job(job_id)["finished_at"]
    time.sleep(0.3)  # the first attempt comes late
    with responses.RequestsMock() as rsps:
        rsps.post(URL, status=200)
        attempt(fake_app, "job", job_id, "job.succeeded")
        payload = json.loads(rsps.calls[0].request.body)
    assert payload["timestamp"] == payload["data"]["finished_at"] == finished_at


def test_a_duplicate_message_sends_nothing(fake_app: FakeApp) -> None:
    job_id = make_job(fake_app)
    with responses.RequestsMock() as rsps:
        rsps.post(URL, status=200)
        assert attempt(fake_app, "job", job_id, "job.succeeded") is not None
        assert attempt(fake_app, "job", job_id, "job.succeeded") is None
        assert len(rsps.calls) == 1
    assert len(Deliveries(fake_app.store).attempts(job_id)) == 1


@pytest.mark.parametrize(
    ("url", "error", "logged"),
    [
        ("http://10.0.0.5/hook", REFUSED, "private"),
        ("http://169.254.169.254/latest", REFUSED, "link-local"),
        ("http://[::ffff:192.168.1.1]/hook", REFUSED, "private"),
        ("http://user:pw@127.0.0.1/h", "credentials", "credentials"),
        ("ftp://127.0.0.1/hook", "scheme 'ftp'", "scheme 'ftp'"),
    ],
)
def test_delivery_time_guard_refuses_before_connecting(
    fake_app: FakeApp,
    url: str,
    error: str,
    logged: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A URL accepted at submit can be refused at delivery (DNS or config changed). The
    partner-visible attempt says only what the partner may know; the worker's log says why."""
    caplog.set_level(logging.INFO, logger="jobgate")
    job_id = make_job(fake_app, callback_url=url)
    connects: list[Any] = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, addr: connects.append(addr))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: connects.append(a))
    entry = attempt(fake_app, "job", job_id, "job.succeeded")
    assert connects == []
    assert entry["outcome"] == "failed" and error in entry["error"]
    [stored] = Deliveries(fake_app.store).attempts(job_id)
    assert stored["error"] == entry["error"]
    if error == REFUSED:
        assert logged not in json.dumps(stored)
    line = next(r.getMessage() for r in caplog.records if r.name == "jobgate.webhooks.attempt")
    assert logged in line and job_id in line
    assert fake_app.sent == []
    assert fake_app.store.job(job_id)["webhook_state"] == "failed"


def test_gone_fails_at_once_and_calls_the_endpoint_hook(
    fake_app: FakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """410: recorded failed with its reason, nothing scheduled, ``endpoint_gone`` called once."""
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(attempts, "endpoint_gone", lambda *args, **_: calls.append(args))
    job_id = make_job(fake_app)
    with responses.RequestsMock() as rsps:
        rsps.post(URL, status=410)
        entry = attempt(fake_app, "job", job_id, "job.succeeded")
    assert entry is not None
    assert (entry["outcome"], entry["next_attempt_at"]) == ("failed", None)
    assert entry["error"] == "HTTP 410 Gone (endpoint gone: not retried)"
    assert scheduled(fake_app) == []
    record = fake_app.store.job(job_id)
    assert calls == [(fake_app.store, "job", job_id, URL, record["partner_id"])]


def test_plan() -> None:
    assert plan("delivered", 1, (5.0,)) == ("delivered", None)
    assert plan("failed", 1, (5.0,)) == ("failed", None)
    assert plan("retry", 2, (5.0,)) == ("failed", None)
    state, delay = plan("retry", 1, (5.0,), retry_after=60.0)
    assert (state, delay) == ("retrying", 60.0)


class RoundTrips:
    """Counts requests written to Redis by one client's connections (a pipeline is one).

    Wraps ``send_packed_command`` of the pool's connection class; the client's own health
    checks and handshakes (``check_health=False``) are not requests of the code under test.
    """

    def __init__(self, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        cls = client.connection_pool.connection_class
        original = cls.send_packed_command
        pool = client.connection_pool

        def counted(conn: Any, command: Any, check_health: bool = True) -> None:
            if check_health and conn in pool._in_use_connections:
                self.count += 1
            return original(conn, command, check_health)

        monkeypatch.setattr(cls, "send_packed_command", counted)


def test_one_attempt_costs_at_most_two_round_trips(
    fake_app: FakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claim + reads, then record + close (+ a job's body, the first time): no more."""
    warm, job_id = make_job(fake_app), make_job(fake_app)
    trips = RoundTrips(fake_app.store.redis, monkeypatch)
    with responses.RequestsMock() as rsps:
        rsps.post(URL, status=500)
        attempt(fake_app, "job", warm, "job.succeeded")  # loads the scripts
        trips.count = 0
        first = attempt(fake_app, "job", job_id, "job.succeeded")
        assert trips.count <= 2
        trips.count = 0
        second = attempt(fake_app, "job", job_id, "job.succeeded", retry=1)
        assert trips.count <= 2
        trips.count = 0
        assert attempt(fake_app, "job", job_id, "job.succeeded", retry=1) is None
        assert trips.count == 1  # a duplicate only tries the claim
        assert len(rsps.calls) == 3
    assert (first["attempt"], second["attempt"]) == (1, 2)


def test_the_log_entry_is_the_returned_attempt(fake_app: FakeApp) -> None:
    """Stored compact, keys in order, ``attempt`` last; summary and job record agree."""
    job_id = make_job(fake_app)
    with responses.RequestsMock() as rsps:
        rsps.post(URL, status=503)
        first = attempt(fake_app, "job", job_id, "job.succeeded")
        rsps.replace("POST", URL, status=200)
        second = attempt(fake_app, "job", job_id, "job.succeeded", retry=1)
    books = Deliveries(fake_app.store)
    raw = fake_app.store.redis.lrange(books.log_key(job_id), 0, -1)
    assert raw == [json.dumps(entry, separators=(",", ":")) for entry in (first, second)]
    assert list(first) == [
        "webhook_id",
        "event",
        "at",
        "status_code",
        "error",
        "duration_ms",
        "next_attempt_at",
        "outcome",
        "redelivery",
        "request",  # the message log: as signed and sent
        "attempt",
    ]
    assert books.attempts(job_id) == [first, second]
    assert books.summary(job_id) == {"state": "delivered", "attempts": 2}
    record = fake_app.store.job(job_id)
    assert (record["webhook_state"], record["webhook_attempts"]) == ("delivered", "2")
    claims = fake_app.store.redis.mget(
        [books.claim_key(job_id, f"job.succeeded:auto:{n}") for n in (0, 1)]
    )
    assert claims == ["done", "done"]


def test_an_expired_job_is_not_resurrected(fake_app: FakeApp) -> None:
    job_id = make_job(fake_app)
    books = Deliveries(fake_app.store)
    entry = {"webhook_id": "msg_x", "event": "job.succeeded", "at": "2024-01-01T00:00:00.000Z"}
    fake_app.store.redis.delete(fake_app.store.key("job", job_id))
    assert books.record(job_id, entry, "retrying", "job", token="t") == (1, [])
    assert not fake_app.store.redis.exists(fake_app.store.key("job", job_id))
    assert books.attempts(job_id) == [{**entry, "attempt": 1}]
    assert fake_app.store.redis.get(books.claim_key(job_id, "t")) == "done"


def test_a_gone_job_sends_nothing_and_closes_the_claim(fake_app: FakeApp) -> None:
    job_id = make_job(fake_app)
    fake_app.store.redis.delete(fake_app.store.key("job", job_id))
    with responses.RequestsMock():
        assert attempt(fake_app, "job", job_id, "job.succeeded") is None
    books = Deliveries(fake_app.store)
    assert fake_app.store.redis.get(books.claim_key(job_id, "job.succeeded:auto:0")) == "done"
    assert books.attempts(job_id) == []


def test_a_rotated_secret_signs_with_both_during_grace(fake_app: FakeApp) -> None:
    job_id = make_job(fake_app)
    partner_id = fake_app.store.job(job_id)["partner_id"]
    assert fake_app.partners.rotate_secret(partner_id, generate_secret(), grace=60)
    with responses.RequestsMock() as rsps:
        rsps.post(URL, status=200)
        attempt(fake_app, "job", job_id, "job.succeeded")
        signatures = rsps.calls[0].request.headers["webhook-signature"].split()
    assert len(signatures) == len(secrets_of(fake_app.partners.get(partner_id))) == 2


def test_a_partner_without_secret_fails_without_sending(fake_app: FakeApp) -> None:
    job_id = make_job(fake_app)
    partner_id = fake_app.store.job(job_id)["partner_id"]
    fake_app.store.redis.hdel(fake_app.store.key("partner", partner_id), "webhook_secret")
    with responses.RequestsMock():
        entry = attempt(fake_app, "job", job_id, "job.succeeded")
    assert entry["outcome"] == "failed" and entry["error"] == "the partner has no webhook secret"
    assert fake_app.sent == []


def test_a_partner_mirror_redis_lost_is_read_from_the_database(fake_app: FakeApp) -> None:
    """Redis restarted without persistence: the partner's mirror is gone, its secret is
    not (the database keeps it), so the attempt signs and the mirror is rebuilt."""
    job_id = make_job(fake_app)
    partner_id = fake_app.store.job(job_id)["partner_id"]
    fake_app.store.redis.delete(fake_app.store.key("partner", partner_id))
    with responses.RequestsMock() as rsps:
        rsps.post(URL, status=200)
        entry = attempt(fake_app, "job", job_id, "job.succeeded")
        assert rsps.calls[0].request.headers["webhook-signature"].startswith("v1,")
    assert entry["outcome"] == "delivered"
    assert fake_app.store.redis.hget(fake_app.store.key("partner", partner_id), "webhook_secret")


def test_a_failed_look_up_of_the_partner_frees_the_claim(fake_app: FakeApp) -> None:
    """The partner's mirror is gone and the database read fails too: the attempt raises
    with its claim given back, so the next message (a redelivery, the sweeper's) sends at
    once instead of finding it taken until the lease lapses."""
    from sqlalchemy.exc import OperationalError

    job_id = make_job(fake_app)
    partner_id = fake_app.store.job(job_id)["partner_id"]
    fake_app.store.redis.delete(fake_app.store.key("partner", partner_id))

    def unreachable(_: str) -> dict[str, str] | None:
        raise OperationalError("SELECT", {}, Exception("the database is down"))

    with pytest.raises(OperationalError):
        attempt(fake_app, "job", job_id, "job.succeeded", partner_of=unreachable)
    with responses.RequestsMock() as rsps:
        rsps.post(URL, status=200)
        entry = attempt(fake_app, "job", job_id, "job.succeeded")
    assert entry is not None and entry["outcome"] == "delivered"


def test_a_gone_batch_sends_nothing_and_closes_the_claim(fake_app: FakeApp) -> None:
    batch_id = "bat_" + uuid.uuid4().hex[:20]
    with responses.RequestsMock():
        assert attempt(fake_app, "batch", batch_id, "batch.completed") is None
    books = Deliveries(fake_app.store)
    claim = books.claim_key(batch_id, "batch.completed:auto:0")
    assert fake_app.store.redis.get(claim) == "done"


def test_the_delivery_task_shares_one_result_backend_across_threads() -> None:
    """Celery's backend is per thread, and in the gevent delivery pool each task is a new
    greenlet (a new thread): the delivery task keeps one for the process instead."""
    import threading

    from tasks.app import make_celery

    app = make_celery(Settings(redis_url="redis://127.0.0.1:6379/0"))
    task = app.tasks[DELIVER_TASK]
    seen: list[tuple[Any, Any]] = []  # kept, so no backend is freed and its id reused
    threads = [
        threading.Thread(target=lambda: seen.append((task.backend, app.backend))) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(ours) for ours, _ in seen}) == 1
    assert len({id(celerys) for _, celerys in seen}) == 3
    assert type(task.backend).__name__ == "RedisBackend"
    app.close()


@pytest.mark.parametrize(("level", "logged"), [(logging.INFO, True), (logging.WARNING, False)])
def test_the_task_hands_celery_its_attempt_only_when_the_success_line_is_logged(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, level: int, logged: bool
) -> None:
    """Celery's tracer reprs every return value, logged or not: at WARNING nothing to repr."""
    recorded = {"outcome": "delivered", "attempt": 1}
    monkeypatch.setattr("tasks.webhooks.run_attempt", lambda *args, **kwargs: recorded)
    trace_log = logging.getLogger("celery.app.trace")
    before = trace_log.level
    trace_log.setLevel(level)  # setLevel, not the attribute: it clears isEnabledFor's cache
    try:
        app = make_celery(Settings(redis_url=redis_url))
        returned = app.tasks[DELIVER_TASK].run("job", "j-1", "job.succeeded")
    finally:
        trace_log.setLevel(before)
    assert returned == (recorded if logged else None)
