"""Trace context for jobs and their webhooks (W3C Trace Context), and OpenTelemetry when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

A ``traceparent`` header sent with ``POST /v1/jobs`` (or ``/v1/batches``) is kept with the
job (its record, hence its row: ``traceparent``) when it is valid, and ignored when it is
not. Each webhook about the job carries ``traceparent`` with the same trace id and a
parent id of its own (this hop's), so a receiver can join the partner's trace.

OpenTelemetry is optional (the ``otel`` extra) and off by default: nothing of it is
imported unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set. Then ``setup`` installs the SDK
with an OTLP/HTTP exporter (configured by the standard ``OTEL_*`` variables) and the
``requests`` instrumentation; the gateway adds OpenTelemetry's Flask instrumentation
(``gateway.create_app``) and the worker its Celery instrumentation (``tasks.app``). The
job and its deliveries are not published through Celery's ``apply_async``, so the worker
hands the kept ``traceparent`` to the Celery instrumentation itself (``task_context``):
the gateway's request, the job's task and each delivery's task share one trace, and the
webhook's ``traceparent`` names the delivery's own span.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

HEADER = "traceparent"
ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"
# version-traceid-parentid-flags, lowercase hex (W3C Trace Context level 1, section 3.2);
# a later version may append fields after a dash.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE, _ZERO_PARENT = "0" * 32, "0" * 16

_state: dict[str, Any] = {"on": False}  # setup's outcome, once per process


def parse_traceparent(value: str | None) -> str | None:
    """The ``traceparent`` to keep (version ``00``), or None if ``value`` is not a valid
    one: wrong shape or case, version ``ff``, an all-zero trace or parent id, or fields
    after a version ``00`` header."""
    if not value or len(value) > 512:
        return None
    found = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if found is None:
        return None
    version, trace_id, parent_id, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
        return None
    return f"00-{trace_id}-{parent_id}-{flags}"


def child(traceparent: str) -> str:
    """The same trace, a new parent id: what the next hop (a webhook) is sent with."""
    _, trace_id, _, flags = traceparent.split("-")[:4]
    parent_id = _ZERO_PARENT
    while parent_id == _ZERO_PARENT:
        parent_id = secrets.token_hex(8)
    return f"00-{trace_id}-{parent_id}-{flags}"


# ------------------------------------------------------------------ OpenTelemetry
def wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Is OpenTelemetry asked for (``OTEL_EXPORTER_OTLP_ENDPOINT`` set)?"""
    return bool((environ if environ is not None else os.environ).get(ENDPOINT_VARIABLE))


def active() -> bool:
    """Did ``setup`` turn OpenTelemetry on in this process?"""
    return bool(_state["on"])


def setup(service: str, *, exporter: Any = None) -> bool:
    """Install OpenTelemetry in this process (once): a tracer provider for ``service``
    exporting to ``exporter`` (default: OTLP over HTTP, ``OTEL_EXPORTER_OTLP_*``), and the
    ``requests`` instrumentation. Does nothing, and imports nothing, unless
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set or an ``exporter`` is given; True when on."""
    if _state["on"]:
        return True
    if exporter is None and not wanted():
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.requests import RequestsInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        raise ImportError(
            f"{ENDPOINT_VARIABLE} is set but OpenTelemetry is not installed ({exc.name} "
            "is missing): pip install 'jobgate[otel]', or unset it",
            name=exc.name,
        ) from exc

    named = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service}
    provider = TracerProvider(resource=Resource.create(named))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    RequestsInstrumentor().instrument()
    _state["on"] = True
    log.info("OpenTelemetry on: %s exports spans", service)
    return True


def current() -> str | None:
    """The current span's ``traceparent`` (OpenTelemetry on, a span recording), else None."""
    if not _state["on"]:
        return None
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return parse_traceparent(carrier.get(HEADER))


def kept(incoming: str | None) -> str | None:
    """What a job keeps from its submit's ``traceparent`` header: with OpenTelemetry on,
    the gateway's span (a child of the header's, or a new trace); else the header if valid."""
    return current() or parse_traceparent(incoming)


def outgoing(stored: str | None) -> str | None:
    """The ``traceparent`` a webhook is sent with: the delivery's span with OpenTelemetry
    on (in the stored trace), else a child of the stored one; None without one."""
    if not stored:
        return None
    return current() or child(stored)


@contextmanager
def client_span(name: str, stored: str | None) -> Iterator[None]:
    """A CLIENT span around one webhook POST (OpenTelemetry on and a trace kept): the
    POST goes through a pinned connection, not ``requests.Session.send``, so the
    ``requests`` instrumentation does not see it."""
    if not _state["on"] or not stored:
        yield
        return
    from opentelemetry import trace

    tracer = trace.get_tracer("jobgate.webhooks")
    with tracer.start_as_current_span(
        name, kind=trace.SpanKind.CLIENT, attributes={"http.request.method": "POST"}
    ):
        yield


def instrument_flask(app: Any) -> bool:
    """OpenTelemetry's Flask instrumentation on the gateway ``app`` (``setup`` first);
    False, and nothing imported, when OpenTelemetry is off."""
    if not setup("jobgate-gateway"):
        return False
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    instrumentor: Any = FlaskInstrumentor  # untyped in some releases
    instrumentor().instrument_app(app)
    return True


def instrument_celery() -> bool:
    """OpenTelemetry's Celery instrumentation in this worker process (``setup`` first);
    False, and nothing imported, when OpenTelemetry is off. Its task spans take their
    parent from the task request's ``traceparent``, which ``tasks.app`` sets from the
    job's record before it runs."""
    if not setup("jobgate-worker"):
        return False
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor: Any = CeleryInstrumentor  # untyped in some releases
    instrumentor().instrument()
    return True
