"""jobgate's Lua scripts: one file each beside this module, read once per process.

Each script is atomic in Redis, which is what makes "first writer wins" and "the end and
its webhook together" hold. ``Scripts(client)`` registers them all on one client
(``EVALSHA``, loaded into Redis on first use); ``Store`` builds it once and every part of
the domain reaches a script through ``store.scripts``.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import redis
from redis.commands.core import Script

NAMES = (
    "job_start",
    "job_progress",
    "job_finish",
    "batch_count",
    "delivery_begin",
    "delivery_record",
    "delivery_mirror",
    "due_move",
    "fan_out",
    "archive_done",
)


@cache
def source(name: str) -> str:
    """The text of ``<name>.lua`` (read from the package once per process)."""
    if name not in NAMES:
        raise KeyError(f"no Lua script named {name!r}")
    return files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """Every script registered on ``client``; ``scripts["job_finish"](keys=…, args=…)``."""

    def __init__(self, client: redis.Redis) -> None:
        self._registered = {name: client.register_script(source(name)) for name in NAMES}

    def __getitem__(self, name: str) -> Script:
        return self._registered[name]
