"""The private names of other libraries jobgate still relies on, each pinned here so that
a release that moves one fails this test (and the drift report, ``.ci/run``) before it
fails a job. Each lives in one module per library: Celery's and kombu's message format in
``tasks/publish.py``, kombu's Redis transport and its keys in ``tasks/transport.py``
(``RedisQueues``: what the sweeper reads and the worker's upkeep refreshes). The domain
package uses none (``test_the_domain_package_reaches_into_no_librarys_private_names``)
and names none of kombu's Redis keys
(``test_the_domain_package_holds_none_of_kombus_redis_layout``)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from celery.backends.base import BaseBackend
from kombu.transport import redis as kombu_redis
from kombu.utils import eventio

pytestmark = [pytest.mark.unit, pytest.mark.contract]

ROOT = Path(__file__).resolve().parents[2]


def params(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_celerys_result_meta_builder_takes_what_publish_passes() -> None:
    assert params(BaseBackend._get_result_meta)[:5] == [
        "self",
        "result",
        "state",
        "traceback",
        "request",
    ]


def test_kombus_redis_channel_hooks_that_transport_overrides() -> None:
    assert params(kombu_redis.Channel._create_client) == ["self", "asynchronous"]
    assert params(kombu_redis.Channel._connparams) == ["self", "asynchronous"]
    assert params(kombu_redis.Channel.conn_or_acquire) == ["self", "client"]
    assert params(kombu_redis.QoS.pipe_or_acquire) == ["self", "pipe", "client"]
    assert callable(kombu_redis.QoS.restore_by_tag)


def test_kombus_unacked_bookkeeping_keys_that_upkeep_and_the_sweeper_read() -> None:
    assert kombu_redis.Channel.unacked_index_key == "unacked_index"
    assert kombu_redis.Channel.unacked_key == "unacked"


def test_kombus_poll_poller_that_transport_rebuilds_under_gevent() -> None:
    source = inspect.getsource(eventio._poll)
    for name in ("_quick_poll", "_quick_register", "_quick_unregister", "_poller"):
        assert f"self.{name}" in source, name


DOMAIN_PRIVATE_OK = {"_mapping"}  # SQLAlchemy's Row._mapping is public despite its name


def private_reads(path: Path) -> list[str]:
    """The ``_name`` attributes ``path`` reads that it neither defines nor assigns: a
    library's private, reached through ``super()``, an instance of a subclass or any
    object. Its own classes' ``self._x = ...`` and its own ``def _x`` are its own."""
    tree = ast.parse(path.read_text(), str(path))
    own = {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
    } | {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
    }
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or name.startswith("__") or name in DOMAIN_PRIVATE_OK:
            continue
        base = node.value
        through_super = isinstance(base, ast.Call) and getattr(base.func, "id", "") == "super"
        if through_super or name not in own:
            found.append(f"{node.lineno} .{name}")
    return found


def test_the_domain_package_reaches_into_no_librarys_private_names() -> None:
    found = {
        str(path.relative_to(ROOT)): reads
        for path in sorted((ROOT / "jobgate").rglob("*.py"))
        if (reads := private_reads(path))
    }
    assert found == {}


KOMBU_REDIS_KEYS = {
    kombu_redis.Channel.unacked_key,
    kombu_redis.Channel.unacked_index_key,
    kombu_redis.Channel.unacked_mutex_key,
}


def test_the_domain_package_holds_none_of_kombus_redis_layout() -> None:
    """kombu's Redis keys are ``tasks.transport.RedisQueues``'s: no string of the domain
    (its modules and its Lua scripts) names one, and no module of it imports kombu or
    Celery, whose message format is ``tasks.publish``'s."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "jobgate").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in KOMBU_REDIS_KEYS:
                found.setdefault(str(path.relative_to(ROOT)), []).append(
                    f"{node.lineno} {node.value!r}"
                )
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            for module in modules:
                if module.split(".")[0] in ("kombu", "celery"):
                    found.setdefault(str(path.relative_to(ROOT)), []).append(
                        f"{node.lineno} import {module}"
                    )
    for path in sorted((ROOT / "jobgate").rglob("*.lua")):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if any(f"'{key}'" in line or f'"{key}"' in line for key in KOMBU_REDIS_KEYS):
                found.setdefault(str(path.relative_to(ROOT)), []).append(f"{lineno} {line}")
    assert found == {}
