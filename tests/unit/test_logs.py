"""A partner's text cannot forge a log line: tracebacks keep messages on their line."""

from __future__ import annotations

import io
import logging
import traceback

import pytest

from jobgate.logs import guard, one_line_messages

FORGED = "[2026-12-06 03:00:00,000: INFO/MainProcess] forged"


class Boom(Exception):
    pass


def raised(make):
    try:
        make()
    except Exception as exc:  # noqa: BLE001 - any exception the test builds
        return exc
    raise AssertionError("nothing raised")


def chained() -> None:
    try:
        raise KeyError("first")
    except KeyError as first:
        error = Boom(f"boom\n{FORGED}\r\n{FORGED}")
        error.add_note(f"note\n{FORGED}")
        raise error from first


def test_a_message_and_its_notes_keep_their_line_breaks_escaped() -> None:
    text = one_line_messages(raised(chained))
    assert not any(line.startswith("[") for line in text.splitlines())
    assert f"test_logs.Boom: boom\\n{FORGED}\\r\\n{FORGED}" in text
    assert f"note\\n{FORGED}" in text
    assert "The above exception was the direct cause" in text  # the chain is kept


@pytest.mark.parametrize(
    "make",
    [
        lambda: 1 / 0,
        lambda: int("x"),
        lambda: {}["missing"],
        lambda: [][1],
    ],
)
def test_a_traceback_without_line_breaks_is_the_one_logging_prints(make) -> None:
    error = raised(make)
    expected = "".join(traceback.format_exception(error)).removesuffix("\n")
    assert one_line_messages(error) == expected


def test_context_too_and_a_suppressed_one_left_out() -> None:
    def context() -> None:
        try:
            raise ValueError("inner")
        except ValueError:
            raise Boom("outer")  # noqa: B904 - the implicit context is the point

    def suppressed() -> None:
        try:
            raise ValueError("inner")
        except ValueError:
            raise Boom("outer") from None

    for make in (context, suppressed):
        error = raised(make)
        assert one_line_messages(error) == "".join(traceback.format_exception(error)).removesuffix(
            "\n"
        )


def test_guarded_handlers_print_the_escaped_traceback() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("jobgate.test_logs")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    guard(logger)
    guard(logger)  # once per handler
    try:
        assert len(handler.filters) == 1
        try:
            chained()
        except Boom:
            logger.exception("task raised unexpected")
    finally:
        logger.removeHandler(handler)
    assert not any(line.startswith(FORGED) for line in stream.getvalue().splitlines())
    assert f"boom\\n{FORGED}" in stream.getvalue()


def test_a_url_is_logged_and_shown_to_others_without_its_tokens() -> None:
    from jobgate.logs import loggable

    assert loggable("https://u:pw@partner.example:8443/hook?token=s3cret#frag") == (
        "https://partner.example:8443/hook"
    )
    assert loggable("http://[::1]:9000/x?k=v") == "http://[::1]:9000/x"
    assert loggable("http://partner.example:99999/x") == ""  # a bad port: nothing shown
