"""Log lines a partner's text cannot forge: an exception's message (a task's error, often
built from a partner's input) keeps its line breaks escaped in the tracebacks jobgate's
processes log, so it can never start a line that reads as a log entry of its own."""

from __future__ import annotations

import logging
import traceback
from urllib.parse import urlsplit, urlunsplit

CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def one_line_messages(exc: BaseException) -> str:
    """``exc``'s traceback as ``logging`` prints it, chained exceptions and notes included,
    with a line break inside an exception's message or note shown as ``\\n``."""
    chain: list[tuple[BaseException, str]] = []
    link: BaseException | None = exc
    joint = ""
    while link is not None and all(link is not seen for seen, _ in chain):
        chain.append((link, joint))
        if link.__cause__ is not None:
            link, joint = link.__cause__, CAUSE
        elif link.__context__ is not None and not link.__suppress_context__:
            link, joint = link.__context__, CONTEXT
        else:
            link = None
    parts: list[str] = []
    for link, joint in reversed(chain):  # oldest first, as traceback prints them
        if link.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts += traceback.format_tb(link.__traceback__)
        kind = type(link)
        name = kind.__qualname__
        if kind.__module__ not in ("builtins", "__main__"):
            name = f"{kind.__module__}.{name}"
        try:
            message = str(link)
        except Exception:  # noqa: BLE001 - as traceback prints such an exception
            message = "<exception str() failed>"
        parts.append(f"{name}: {_escaped(message)}\n" if message else f"{name}\n")
        parts += [f"{_escaped(str(note))}\n" for note in getattr(link, "__notes__", ())]
        parts.append(joint)
    return "".join(parts).removesuffix("\n")


def _escaped(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


class OneLineMessages(logging.Filter):
    """A handler's filter: the traceback of a record is formatted by
    ``one_line_messages`` (``logging.Formatter`` uses a record's ``exc_text`` when set)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = one_line_messages(record.exc_info[1])
        return True


def guard(logger: logging.Logger) -> None:
    """Put ``OneLineMessages`` on each of ``logger``'s handlers (once)."""
    for handler in logger.handlers:
        if not any(isinstance(f, OneLineMessages) for f in handler.filters):
            handler.addFilter(OneLineMessages())


def loggable(url: str) -> str:
    """A URL as jobgate logs it and shows it to anyone but its owner: no query, fragment
    or credentials (a partner's tokens travel there); "" if it does not parse."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return ""
    netloc = f"[{host}]" + netloc[len(host) :] if ":" in host else netloc
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
