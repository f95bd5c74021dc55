"""Settings from the environment, and the request schemas (no services)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from marshmallow import ValidationError

from config import Settings, SettingsError, format_ports
from gateway.schemas.jobs import BatchSubmitSchema, JobSubmitSchema, RevokeSchema
from gateway.schemas.partners import PartnerCreateSchema
from tasks.builtin import DocumentsParams, EmbedParams, SleepParams
from tasks.registry import job_types
from tests.helpers import ROOT


def test_defaults_match_the_contract():
    s = Settings.from_env({})
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.broker_url == s.result_backend == s.redis_url
    assert s.result_expires == 3600
    assert s.job_retention == 90 * 24 * 3600  # in the database (issue 12)
    assert s.job_cache_ttl == 3600  # in Redis once archived
    assert s.database_url == "sqlite:///jobgate.sqlite3"
    assert s.max_body == 1024 * 1024
    assert s.max_result_bytes == 1024 * 1024  # a larger result fails its job
    # Svix's schedule after a first attempt sent at once: 5 s, 5 min, 30 min, 2 h, 5 h,
    # 10 h, 10 h (8 attempts, a day and more in all); one attempt may take 15 s.
    assert s.webhook_retry_delays == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert sum(s.webhook_retry_delays) > 24 * 3600
    assert s.webhook_timeout == 15.0
    assert s.admin_keys == ()
    assert s.callback_allow_http is False
    assert s.callback_ports == ((443, 443), (80, 80), (1024, 65535))
    assert s.callback_dns_timeout == 2.0
    assert s.demo_tasks is False  # on in `jobgate dev`, not in production
    # Workers refresh what they hold, so the timeout only bounds how long a dead
    # worker's jobs wait: within the 60 s recovery target, above a few refreshes.
    assert 10 <= s.visibility_timeout <= 45


def test_environment_overrides_and_derivation():
    s = Settings.from_env(
        {
            "REDIS_URL": "redis://r:1/2",
            "CELERY_BROKER_URL": "redis://b:1/0",
            "JOBGATE_ADMIN_KEYS": " a, b ,",
            "JOBGATE_DEMO_TASKS": "1",
            "JOBGATE_WEBHOOK_RETRY_DELAYS": "1,2.5",
        }
    )
    assert s.broker_url == "redis://b:1/0"
    assert s.result_backend == "redis://r:1/2"
    assert s.admin_keys == ("a", "b")
    assert s.demo_tasks is True
    assert s.webhook_retry_delays == (1.0, 2.5)
    moved = s.with_overrides(redis_url="redis://other:1/0")
    assert moved.result_backend == "redis://other:1/0"


def test_callback_ports_are_parsed_once_into_ranges():
    s = Settings.from_env({"JOBGATE_CALLBACK_PORTS": " 443, 8000-8999 ,8443"})
    assert s.callback_ports == ((443, 443), (8000, 8999), (8443, 8443))
    assert format_ports(s.callback_ports) == "443,8000-8999,8443"
    assert Settings.from_env({"JOBGATE_CALLBACK_PORTS": format_ports(s.callback_ports)}) == s
    with pytest.raises(SettingsError, match="JOBGATE_CALLBACK_PORTS"):
        Settings(callback_ports=((0, 10),))


def test_bad_values_name_the_variable():
    with pytest.raises(ValueError, match="JOBGATE_MAX_BODY"):
        Settings.from_env({"JOBGATE_MAX_BODY": "lots"})


def test_demo_tasks_can_be_hidden():
    assert "demo.sleep" in job_types(demo=True)
    assert not [name for name in job_types(demo=False) if name.startswith("demo.")]
    assert {"documents.process", "texts.embed"} <= set(job_types(demo=False))


def test_each_job_type_builds_its_params_schema_once():
    sleep = job_types()["demo.sleep"]
    assert sleep.params_schema is sleep.params_schema
    assert isinstance(sleep.params_schema, SleepParams)
    with pytest.raises(ValidationError):
        sleep.params_schema.load({"seconds": "long"})
    assert sleep.params_schema.load({"seconds": 0})["seconds"] == 0


def test_submit_schema_defaults_and_unknown_fields():
    loaded = JobSubmitSchema().load({"task": "demo.sleep"})
    assert loaded == {
        "task": "demo.sleep",
        "params": {},
        "callback_url": None,
        "metadata": {},
        "priority": 5,
        "delay_seconds": None,
        "run_at": None,
    }
    with pytest.raises(ValidationError) as exc:
        JobSubmitSchema().load({"task": "demo.sleep", "colour": "red"})
    assert "colour" in exc.value.messages


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "task"),
        ({"task": 5}, "task"),
        ({"task": "x", "params": [1]}, "params"),
        ({"task": "x", "metadata": "no"}, "metadata"),
        ({"task": "x", "metadata": {"big": "x" * 20000}}, "metadata"),
        ({"task": "x", "callback_url": "y" * 3000}, "callback_url"),
    ],
)
def test_submit_schema_rejects(body, field):
    with pytest.raises(ValidationError) as exc:
        JobSubmitSchema().load(body)
    assert field in exc.value.messages


@pytest.mark.parametrize(
    "schema, params, field",
    [
        (SleepParams, {"seconds": -1}, "seconds"),
        (SleepParams, {"seconds": 3601}, "seconds"),
        (SleepParams, {"steps": 0}, "steps"),
        (SleepParams, {"steps": "many"}, "steps"),
        (SleepParams, {"steps": 1.5}, "steps"),
        (EmbedParams, {"texts": ["a"], "dimensions": "64"}, "dimensions"),
        (EmbedParams, {"texts": ["a"] * 500, "dimensions": 4096}, "dimensions"),
        (
            DocumentsParams,
            {"documents": [{"name": "a", "text": "w"}], "chunk_words": 5, "overlap": 5},
            "overlap",
        ),
        (
            DocumentsParams,
            {
                "documents": [{"name": "a", "text": "w " * 600}],
                "chunk_words": 10000,
                "overlap": 9999,
            },
            "overlap",
        ),
        (DocumentsParams, {"documents": []}, "documents"),
        (DocumentsParams, {"documents": [{"name": "a"}]}, "documents"),
        (EmbedParams, {"texts": "not a list"}, "texts"),
        (EmbedParams, {"texts": ["a"], "dimensions": 4}, "dimensions"),
    ],
)
def test_task_params_are_validated(schema, params, field):
    with pytest.raises(ValidationError) as exc:
        schema().load(params)
    assert field in exc.value.messages


def test_batch_metadata_has_the_cap_of_a_jobs():
    member = {"task": "x"}
    fits = {"blob": "x" * 16000}
    assert BatchSubmitSchema().load({"jobs": [member], "metadata": fits})["metadata"] == fits
    with pytest.raises(ValidationError) as exc:
        BatchSubmitSchema().load({"jobs": [member], "metadata": {"big": "x" * 20000}})
    assert "metadata" in exc.value.messages


def test_partner_and_revoke_schemas():
    assert PartnerCreateSchema().load({"name": "acme"}) == {"name": "acme"}
    with pytest.raises(ValidationError):
        PartnerCreateSchema().load({"name": "   "})
    assert RevokeSchema().load({}) == {"reason": "", "terminate": True}


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("JOBGATE_RATE_LIMIT", "abc", "invalid literal"),
        ("JOBGATE_WEBHOOK_RETRY_DELAYS", "5,-1", "no negative delay"),
        ("JOBGATE_VISIBILITY_TIMEOUT", "1", "at least 2 seconds"),
        ("JOBGATE_CALLBACK_ALLOW_HTTP", "", None),  # empty means the default
        ("REDIS_URL", "http://localhost", "redis://"),
        ("JOBGATE_CALLBACK_PORTS", "https", "not a port or a range"),
        ("JOBGATE_CALLBACK_PORTS", "0", "within 1-65535"),
        ("JOBGATE_CALLBACK_PORTS", "443,70000", "within 1-65535"),
        ("JOBGATE_CALLBACK_PORTS", "9000-8000", "low first"),
        ("JOBGATE_CALLBACK_PORTS", " , ", "at least one port"),
        ("JOBGATE_CALLBACK_DNS_TIMEOUT", "0", "at least 0.01 second"),
        ("JOBGATE_CALLBACK_DNS_TIMEOUT", "soon", "could not convert"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(variable, value, says):
    if says is None:
        assert Settings.from_env({variable: value}) == Settings()
        return
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value})
    message = str(caught.value)
    assert message.startswith(f"{variable}=") and says in message and "\n" not in message


def test_entry_points_stop_with_that_line_and_imports_read_no_settings():
    env = {**os.environ, "JOBGATE_RATE_LIMIT": "abc", "PYTHONPATH": str(ROOT)}
    # Importing the packages reads no settings (no import-time app): it works.
    imported = subprocess.run(
        [sys.executable, "-c", "import gateway.jobs, tasks, jobgate.store"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.returncode == 0, imported.stderr
    for module in ("wsgi", "tasks.worker"):
        started = subprocess.run(
            [sys.executable, "-c", f"import {module}"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert started.returncode == 1
        assert started.stderr.strip() == (
            "jobgate: JOBGATE_RATE_LIMIT='abc' is not valid: "
            "invalid literal for int() with base 10: 'abc'"
        )


@pytest.mark.parametrize("command", [["worker"], ["partner", "list"], ["dev"]])
def test_the_jobgate_command_says_a_bad_setting_in_one_line(command):
    from click.testing import CliRunner

    from gateway.cli import main

    result = CliRunner().invoke(main, command, env={"JOBGATE_RATE_LIMIT": "x"})
    assert result.exit_code == 1
    assert result.output == (
        "Error: JOBGATE_RATE_LIMIT='x' is not valid: invalid literal for int() with base 10: 'x'\n"
    )


def test_endpoint_headers_rules() -> None:
    """jobgate.endpoint_headers.check_headers: tokens for names, reserved names in any case,
    printable ASCII values (a tab inside is fine), and the bounds."""
    from jobgate.endpoint_headers import MAX_HEADERS_BYTES, check_headers

    assert check_headers({"Authorization": "Bearer a\tb", "X-Tenant_1.v2": "~!"}) == {}
    for name in (
        "webhook-id",
        "Webhook-Anything",
        "HOST",
        "Proxy-Authorization",
        "TE",
        "Accept-Encoding",
    ):
        assert "Reserved" in check_headers({name: "v"})[name][0], name
    for value in ("a\rb", "a\nb", "a\x00b", "a\x7fb", "trailing ", "\tlead", ""):
        assert "printable ASCII" in check_headers({"X-A": value})["X-A"][0], repr(value)
    assert "Repeated" in check_headers({"X-A": "1", "x-A": "2"})["x-A"][0]
    half = MAX_HEADERS_BYTES // 2
    assert check_headers({"X-A": "v" * (half - 3), "X-B": "v" * (half - 3)}) == {}
    assert "_headers" in check_headers({"X-A": "v" * (half - 3), "X-B": "v" * (half - 2)})
