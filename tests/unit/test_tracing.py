"""W3C Trace Context as jobgate keeps and forwards it (``jobgate.tracing``), and
OpenTelemetry staying off (nothing imported) without ``OTEL_EXPORTER_OTLP_ENDPOINT``."""

from __future__ import annotations

import sys

import pytest

from jobgate import tracing

TRACE, PARENT = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        (VALID, VALID),
        (f"00-{TRACE}-{PARENT}-00", f"00-{TRACE}-{PARENT}-00"),  # not sampled: kept as is
        (f" {VALID}\t", VALID),  # optional whitespace around a header value
        # A later version: its first four fields are read, sent on as version 00.
        (f"cc-{TRACE}-{PARENT}-01-what-the-future-holds", VALID),
        (f"cc-{TRACE}-{PARENT}-01", VALID),
    ],
)
def test_a_valid_traceparent_is_kept(value: str, kept: str) -> None:
    assert tracing.parse_traceparent(value) == kept


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        VALID.upper(),  # hex is lowercase
        f"ff-{TRACE}-{PARENT}-01",  # version ff is invalid
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE[:-1]}-{PARENT}-01",  # short trace id
        f"00-{TRACE}-{PARENT}-1",  # short flags
        f"00-{TRACE}x-{PARENT}-01",
        f"00_{TRACE}_{PARENT}_01",
        VALID + "-" + "a" * 600,  # absurdly long
    ],
)
def test_an_invalid_traceparent_is_ignored(value: str | None) -> None:
    assert tracing.parse_traceparent(value) is None
    assert tracing.kept(value) is None  # OpenTelemetry off: nothing kept


def test_the_next_hop_keeps_the_trace_with_a_parent_id_of_its_own() -> None:
    seen = set()
    for _ in range(50):
        hop = tracing.child(VALID)
        assert tracing.parse_traceparent(hop) == hop
        version, trace_id, parent_id, flags = hop.split("-")
        assert (version, trace_id, flags) == ("00", TRACE, "01")
        assert parent_id != PARENT
        seen.add(parent_id)
    assert len(seen) == 50
    assert tracing.outgoing(None) is None
    assert tracing.outgoing(VALID).split("-")[1] == TRACE


def test_opentelemetry_stays_off_and_unimported_without_the_endpoint(monkeypatch) -> None:
    if tracing.active():
        pytest.skip("another test of this process turned OpenTelemetry on (tests/webhooks)")
    monkeypatch.delenv(tracing.ENDPOINT_VARIABLE, raising=False)
    before = {name for name in sys.modules if name.startswith("opentelemetry")}
    assert tracing.wanted() is False
    assert tracing.setup("test") is False
    assert tracing.instrument_flask(object()) is False
    assert tracing.instrument_celery() is False
    assert tracing.active() is False and tracing.current() is None
    with tracing.client_span("webhook POST", VALID):
        pass
    after = {name for name in sys.modules if name.startswith("opentelemetry")}
    assert after == before
    assert tracing.wanted({tracing.ENDPOINT_VARIABLE: "http://collector:4318"}) is True
