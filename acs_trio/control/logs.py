"""Logging set-up: human-readable lines by default, one JSON object per line with ``LOG_FORMAT=json``.

JSON lines come from python-json-logger's formatter (no hand-rolled serialisation).  Every line
logged while a call is being handled carries ``call_id`` and ``correlation_id`` as keys: the
control plane wraps each call's supervisor and media handler in :func:`call_context`, and the
filter reads the ids from that context variable (Trio tasks inherit it from the task that started
them, so the call's own tasks carry it too).  The call's summary line ("call ended") also carries
every summary field (``end_reason``, ``ttfa_ms``, ``barge_in_latency_ms``…) as keys.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

from ..call.lifecycle import CallHandle

__all__ = ["CallContextFilter", "call_context", "configure_logging", "json_formatter"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: The call whose work the current task is doing (None outside calls).
_CURRENT_CALL: ContextVar[CallHandle | None] = ContextVar("acs_trio_call", default=None)

#: Loggers that log multi-line request/response dumps at INFO (azure-core) or every request.
_NOISY = ("azure.core.pipeline.policies.http_logging_policy", "httpx")


@contextlib.contextmanager
def call_context(handle: CallHandle) -> Iterator[None]:
    """Log lines in this block (and in tasks started from it) carry the call's ids."""
    token = _CURRENT_CALL.set(handle)
    try:
        yield
    finally:
        _CURRENT_CALL.reset(token)


class CallContextFilter(logging.Filter):
    """Adds ``call_id`` and ``correlation_id`` to records logged in a call's context."""

    def filter(self, record: logging.LogRecord) -> bool:
        handle = _CURRENT_CALL.get()
        if handle is not None and not hasattr(record, "call_id"):
            record.call_id = handle.ids.call_id
            record.correlation_id = handle.ids.correlation_id
        return True


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "{asctime}{levelname}{name}{message}",
        style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        timestamp=False,
    )


def configure_logging(level: str, log_format: str = "text") -> None:
    """Root handler on stderr; replaces any handler set before (one format per process)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CallContextFilter())
    if log_format == "json":
        handler.setFormatter(json_formatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
