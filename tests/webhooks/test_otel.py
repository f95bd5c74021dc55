"""OpenTelemetry on (the ``otel`` extra, ``OTEL_EXPORTER_OTLP_ENDPOINT`` set): the
gateway's request, the job and its webhook delivery export spans in one trace, the
partner's, and the webhook's ``traceparent`` names the delivery's span.

The gateway runs in this process with an in-memory span exporter; the real
``jobgate worker`` exports over OTLP/HTTP to a small collector here, which decodes what
it gets with OpenTelemetry's own protobuf classes. Skipped without the extra.
"""

from __future__ import annotations

import gzip
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra is not installed")
pytest.importorskip("opentelemetry.instrumentation.flask", reason="the otel extra is not installed")
pytest.importorskip(
    "opentelemetry.instrumentation.celery", reason="the otel extra is not installed"
)
pytest.importorskip(
    "opentelemetry.exporter.otlp.proto.http", reason="the otel extra is not installed"
)

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from jobgate import tracing  # noqa: E402
from tests.conftest import ADMIN_KEY  # noqa: E402
from tests.helpers import WorkerProcess, gateway_for, wait_until  # noqa: E402
from tests.webhooks.conftest import Receiver  # noqa: E402


class Collector:
    """An OTLP/HTTP trace endpoint on 127.0.0.1 that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []  # opentelemetry.proto.trace.v1.Span
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with collector._lock:
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            collector.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def in_trace(self, trace_id: str) -> list[Any]:
        with self._lock:
            return [span for span in self.spans if span.trace_id.hex() == trace_id]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    yield server
    server.stop()


def test_gateway_job_and_delivery_spans_share_the_partners_trace(
    settings, redis_client, collector, monkeypatch
):
    # On for this test only: the gateways other tests of this process build stay plain.
    monkeypatch.setitem(tracing._state, "on", False)
    memory = InMemorySpanExporter()
    assert tracing.setup("jobgate-gateway", exporter=memory)  # this process: the gateway
    tag = f"otel-{uuid.uuid4().hex[:8]}"
    own = settings.with_overrides(
        key_prefix=tag, queue_jobs=f"{tag}-jobs", queue_webhooks=f"{tag}-hooks"
    )
    client, partner, _ = gateway_for(own, ADMIN_KEY)  # create_app instruments it
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "jobgate-worker-under-test",
    }
    worker = WorkerProcess(own, concurrency=1, name="otel", env=env).start()
    receiver = Receiver()
    try:
        trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
        response = client.post(
            "/v1/jobs",
            json={"task": "demo.sleep", "params": {"seconds": 0}, "callback_url": receiver.url},
            headers={**partner["headers"], "traceparent": f"00-{trace_id}-{parent_id}-01"},
        )
        assert response.status_code == 202, response.get_json()
        [request] = receiver.wait_for(1)

        # The gateway's span (OpenTelemetry's Flask instrumentation), a child of the header.
        [submit] = [
            span
            for span in memory.get_finished_spans()
            if span.context.trace_id == int(trace_id, 16) and "/v1/jobs" in span.name
        ]
        assert submit.parent is not None and submit.parent.span_id == int(parent_id, 16)

        # The worker's: the job's and the delivery's task (OpenTelemetry's Celery
        # instrumentation) and the webhook's POST, all in that trace.
        def worker_spans() -> dict[str, Any] | None:
            found = {span.name: span for span in collector.in_trace(trace_id)}
            wanted = ("run/demo.sleep", "run/jobgate.deliver_webhook", "webhook POST")
            return found if all(name in found for name in wanted) else None

        found = wait_until(worker_spans, 20, 0.1, "the worker's spans at the collector")
        gateway_span = submit.context.span_id.to_bytes(8, "big")
        assert found["run/demo.sleep"].parent_span_id == gateway_span
        assert found["run/jobgate.deliver_webhook"].parent_span_id == gateway_span
        post = found["webhook POST"]
        assert post.parent_span_id == found["run/jobgate.deliver_webhook"].span_id
        # The receiver is handed the delivery's own span as its parent.
        assert request.headers["traceparent"] == f"00-{trace_id}-{post.span_id.hex()}-01"
    finally:
        receiver.stop()
        worker.stop()
