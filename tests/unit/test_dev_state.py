"""What ``jobgate dev`` keeps in .jobgate-dev/dev.json and how the other commands run in
its directory use it (the processes themselves: tests/integration/test_dev_newcomer.py)."""

from __future__ import annotations

import os
import stat

import click
import pytest

from config import Settings
from gateway import cli, dev

pytestmark = pytest.mark.unit


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".jobgate-dev").mkdir()
    return tmp_path


def test_commands_beside_dev_use_its_database_and_redis_and_say_so(here, capsys):
    url = "postgresql+psycopg://jg:s3cret@db.example/jobs"
    dev.write_dev_state({"database_url": url, "redis_url": "redis://127.0.0.1:6390/0"})
    assert stat.S_IMODE(os.stat(here / ".jobgate-dev" / "dev.json").st_mode) == 0o600
    settings = cli.cli_settings({})
    assert settings.database_url == url and settings.redis_url == "redis://127.0.0.1:6390/0"
    said = capsys.readouterr().err
    assert "database of `jobgate dev`" in said and "s3cret" not in said
    # An explicit JOBGATE_DATABASE_URL (or REDIS_URL) wins, silently.
    own = cli.cli_settings({"JOBGATE_DATABASE_URL": "sqlite:///mine.sqlite3"})
    assert own.database_url == "sqlite:///mine.sqlite3" and capsys.readouterr().err == ""
    assert cli.cli_settings({"REDIS_URL": "redis://elsewhere:1/0"}).redis_url.startswith(
        "redis://elsewhere"
    )


def test_a_missing_sqlite_file_is_refused_and_not_created(here):
    settings = Settings.from_env({"JOBGATE_DATABASE_URL": "sqlite:///nothing.sqlite3"})
    with pytest.raises(click.ClickException, match="no database at .*nothing.sqlite3"):
        cli.require_database_file(settings)
    assert not (here / "nothing.sqlite3").exists()


def test_dev_keeps_the_admin_key_it_made_not_one_from_the_environment(here):
    _, first = dev.dev_environment({})
    assert first.startswith("dev-admin-")
    _, again = dev.dev_environment({}, {"admin_key": first})
    assert again == first
    _, given = dev.dev_environment({"JOBGATE_ADMIN_KEYS": "ops-key"}, {"admin_key": first})
    assert given == "ops-key"
    _, fresh = dev.dev_environment({}, {"admin_key": "not-a-dev-key"})
    assert fresh.startswith("dev-admin-") and fresh != first


def test_the_secret_key_is_kept_in_dev_json_and_used_by_the_commands_beside_it(here):
    """One file holds what ``jobgate dev`` keeps: its JOBGATE_SECRET_KEY too (an older
    ``.jobgate-dev/secret-key`` is read once, then kept in dev.json)."""
    made = dev.dev_secret_key({})
    assert made and dev.dev_secret_key({}) != made  # nothing kept: a new key each time
    assert dev.dev_secret_key({"secret_key": made}) == made
    env, _ = dev.dev_environment({}, {"secret_key": made})
    assert env["JOBGATE_SECRET_KEY"] == made
    given, _ = dev.dev_environment({"JOBGATE_SECRET_KEY": "from-env"}, {"secret_key": made})
    assert given["JOBGATE_SECRET_KEY"] == "from-env"
    dev.write_dev_state({"database_url": "sqlite:///x.sqlite3", "secret_key": made})
    assert cli.cli_settings({}).secret_key == made
    assert cli.cli_settings({"JOBGATE_SECRET_KEY": "mine"}).secret_key == "mine"
    dev.OLD_SECRET_KEY.write_text("older\n")
    assert dev.dev_secret_key({}) == "older"


def test_an_unreadable_dev_json_stops_dev_and_is_never_overwritten(here):
    """dev.json holds the only copy of dev's secret key: a file that does not parse stops
    ``jobgate dev`` with one line rather than a new key over the old (the commands
    beside it read it leniently). An older secret-key file still serves those commands."""
    broken = here / ".jobgate-dev" / "dev.json"
    broken.write_text('{"secret_key": "abc"')  # cut short
    with pytest.raises(click.ClickException, match="mend or remove it"):
        dev.read_dev_state(strict=True)
    assert dev.read_dev_state() == {}
    assert broken.read_text() == '{"secret_key": "abc"'
    broken.unlink()
    (here / ".jobgate-dev" / "jobgate.sqlite3").write_text("")
    dev.OLD_SECRET_KEY.write_text("older\n")
    assert cli.cli_settings({}).secret_key == "older"
