"""The Sentinel form of the Redis settings: parsed, checked, and handed to every client."""

from __future__ import annotations

import pytest

from config import Settings, SettingsError, parse_sentinel_url
from jobgate.connections import SentinelBlockingConnectionPool, redis_client
from jobgate.store import POOL_WAIT, Store
from tasks.publish import same_redis

URL = "sentinel://10.0.0.1:26379/2;sentinel://10.0.0.2:26380/2;sentinel://10.0.0.3"


def test_a_sentinel_url_names_every_sentinel_and_the_db_of_the_first_chunk():
    parsed = parse_sentinel_url("sentinel://:s%40cret@h1/3;sentinel://h2:26380")
    assert parsed.sentinels == (("h1", 26379), ("h2", 26380))
    assert (parsed.db, parsed.username, parsed.password) == (3, None, "s@cret")
    assert parse_sentinel_url(URL).db == 2


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"REDIS_URL": URL}, "set JOBGATE_REDIS_SENTINEL_MASTER"),
        ({"JOBGATE_REDIS_SENTINEL_MASTER": "m"}, "no Redis URL is sentinel://"),
        (
            {"REDIS_URL": "sentinel://a/1;sentinel://b/2", "JOBGATE_REDIS_SENTINEL_MASTER": "m"},
            "db and password go on the first chunk",
        ),
        (
            {"REDIS_URL": "sentinel://a:port", "JOBGATE_REDIS_SENTINEL_MASTER": "m"},
            "bad port",
        ),
        (
            {"CELERY_BROKER_URL": "sentinel://a;redis://b", "JOBGATE_REDIS_SENTINEL_MASTER": "m"},
            "CELERY_BROKER_URL=",
        ),
    ],
)
def test_a_bad_sentinel_setting_is_one_line(env, says):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_broker_and_backend_follow_a_sentinel_redis_url_and_stay_the_same_redis():
    settings = Settings.from_env({"REDIS_URL": URL, "JOBGATE_REDIS_SENTINEL_MASTER": "mymaster"})
    assert settings.broker_url == settings.result_backend == URL
    assert same_redis(settings.broker_url, settings.redis_url)
    assert settings.sentinel_master_for(URL) == "mymaster"
    assert settings.sentinel_master_for("redis://x/0") == ""


def test_the_store_asks_the_sentinels_with_a_bounded_decoding_pool():
    store = Store.from_url(URL, sentinel_master="mymaster", max_connections=7)  # no I/O yet
    pool = store.redis.connection_pool
    assert isinstance(pool, SentinelBlockingConnectionPool)
    assert pool.service_name == "mymaster" and pool.max_connections == 7
    assert pool.timeout == POOL_WAIT
    kwargs = pool.connection_kwargs
    assert kwargs["decode_responses"] is True and kwargs["db"] == 2
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (5, 2)
    sentinels = pool.sentinel_manager.sentinels
    assert [c.connection_pool.connection_kwargs["port"] for c in sentinels] == [26379, 26380, 26379]
    assert sentinels[0].connection_pool.connection_kwargs["socket_timeout"] == 2


def test_a_sentinel_url_without_a_master_name_is_refused():
    with pytest.raises(ValueError, match="master name"):
        redis_client(URL)


def test_celery_gets_the_master_name_for_broker_and_backend():
    from tasks.app import make_celery

    app = make_celery(Settings(redis_url=URL, redis_sentinel_master="mymaster"))
    try:
        assert app.conf.broker_transport_options["master_name"] == "mymaster"
        assert app.conf.result_backend_transport_options["master_name"] == "mymaster"
        assert app.conf.broker_transport_options["visibility_timeout"] == 30
        assert type(app.backend).__name__ == "SentinelBackend"
        assert app.messenger.inline  # the MULTI that creates a job also queues it
    finally:
        app.close()
