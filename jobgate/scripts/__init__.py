"""jobgate's Lua scripts: one file each beside this module, read once per process.

Each script is atomic in Redis, which is what makes "first writer wins" and "the end and
its webhook together" hold. A script may include a shared file (``--! include <name>``,
see LIBRARY). ``Scripts(client)`` registers them all on one client
(``EVALSHA``, loaded into Redis on first use); ``Store`` builds it once and every part of
the domain reaches a script through ``store.scripts``.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

import redis
from redis.commands.core import Script

NAMES = (
    "job_start",
    "job_send",
    "job_sent",
    "job_progress",
    "job_finish",
    "batch_count",
    "delivery_begin",
    "body_store",
    "delivery_record",
    "delivery_release",
    "delivery_mirror",
    "delivery_redeliver",
    "due_move",
    "fan_out",
    "archive_done",
    "worker_alive",
    "workers_live",
    "submit",
    "dispatch_tick",
    "stream_open",
    "endpoint_pause",
)
# Files other scripts include (``--! include <name>`` on a line of its own), never run alone.
LIBRARY = ("celery_meta", "dispatch", "inflight", "throttle")
INCLUDE = re.compile(r"^--! include (\w+)$", re.MULTILINE)


@cache
def source(name: str) -> str:
    """The text of ``<name>.lua`` with its includes in place (read once per process)."""
    if name not in NAMES and name not in LIBRARY:
        raise KeyError(f"no Lua script named {name!r}")
    text = files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return INCLUDE.sub(lambda found: source(found.group(1)), text)


class Scripts:
    """Every script registered on ``client``; ``scripts["job_finish"](keys=…, args=…)``."""

    def __init__(self, client: redis.Redis) -> None:
        self._registered = {name: client.register_script(source(name)) for name in NAMES}

    def __getitem__(self, name: str) -> Script:
        return self._registered[name]
