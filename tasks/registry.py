"""The task catalog: one decorated function per job type, with its params schema.

Adding a task to jobgate is one function::

    @job_task("reports.build", params=ReportParams, description="Build a report.")
    def build_report(progress: Progress, *, year: int) -> dict: ...

It is then registered on every Celery app that ``tasks.make_celery`` builds, listed by
``GET /v1/tasks`` with the JSON schema of ``params``, and validated at submit time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from marshmallow import Schema


@dataclass(frozen=True)
class JobType:
    name: str
    func: Callable[..., Any]
    params: type[Schema]
    description: str
    demo: bool = False
    # Run the job again when the worker running it was lost (killed, OOM, node gone);
    # False for a task that must not run twice: it then ends FAILURE with "worker_lost".
    retry_on_worker_lost: bool = True

    @cached_property
    def params_schema(self) -> Schema:
        """One instance of ``params`` for every submit: a schema keeps no state between
        loads, and building one per request showed in profiles of the gateway."""
        return self.params()


REGISTRY: dict[str, JobType] = {}


def job_task(
    name: str,
    *,
    params: type[Schema],
    description: str | None = None,
    demo: bool = False,
    retry_on_worker_lost: bool = True,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a job type; the function gets a Progress helper and the loaded params.

    ``retry_on_worker_lost=False`` marks a task that is not safe to run twice: if the
    worker running it dies, the job ends FAILURE (``worker_lost``) instead of running again.
    """

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        if name in REGISTRY and REGISTRY[name].func is not func:
            raise ValueError(f"job type {name!r} is declared twice")
        doc = description or (func.__doc__ or "").strip().splitlines()[0]
        REGISTRY[name] = JobType(name, func, params, doc, demo, retry_on_worker_lost)
        return func

    return register


def job_types(*, demo: bool = True) -> dict[str, JobType]:
    """The declared job types, without ``demo.*`` when demo tasks are switched off."""
    from tasks import builtin  # noqa: F401  (importing declares the built-in tasks)

    return {name: jt for name, jt in sorted(REGISTRY.items()) if demo or not jt.demo}
