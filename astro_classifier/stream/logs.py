"""Structured logging of the Kafka worker: one JSON object per line on stderr.

Every line has ``ts`` (UTC, ISO 8601), ``level`` and ``event``; :func:`log_event` adds the
event's fields. Records of other loggers (librdkafka, a library warning) become
``event: "log"`` with ``logger`` and ``message``, so the stream stays machine-readable.

Repeated errors are rate-limited (:class:`RepeatFilter`): a warning or error of the events in
:data:`RATE_LIMITED_EVENTS` that repeats one already written within ``REPEAT_WINDOW_S``
(same event, code and text, numbers ignored) is counted instead of written; the next line
of that kind after the window carries ``repeated``: how many were left out. An unreachable
broker makes librdkafka report the same failure many times a second; the log keeps one line
per kind every few seconds.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger("astro_classifier.stream")

_HANDLER_MARK = "_astroclf_json_handler"


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``event`` and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
        }
        fields = getattr(record, "fields", None)
        if fields is not None:
            doc["event"] = record.msg
            doc.update(fields)
        else:
            doc["event"] = "log"
            doc["logger"] = record.name
            doc["message"] = record.getMessage()
        repeated = getattr(record, "repeated", None)
        if repeated:
            doc["repeated"] = repeated  # lines like this one left out since the last one
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


REPEAT_WINDOW_S = 10.0
# Events that librdkafka or a failing dependency can repeat many times a second.
RATE_LIMITED_EVENTS = frozenset(
    {
        "log",  # other loggers: librdkafka's own lines
        "kafka_error",
        "consume_error",
        "commit_failed",
        "delivery_failed",
        "kafka_retry",
        "seek_failed",
        "store_offsets_failed",
        "stats_unreadable",
    }
)
_NUMBERS = re.compile(r"\d+")


class RepeatFilter(logging.Filter):
    """Lets the first of a kind of repeated warning through, then one per ``window_s`` with
    ``repeated`` = the lines of that kind left out meanwhile (see the module docstring)."""

    def __init__(
        self, window_s: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self._kinds: dict[tuple, tuple[float, int]] = {}  # kind -> (written at, left out)
        self._lock = threading.Lock()

    @staticmethod
    def kind(record: logging.LogRecord) -> tuple | None:
        if record.levelno < logging.WARNING:
            return None
        fields = getattr(record, "fields", None)
        if fields is None:
            text = record.getMessage()
            return ("log", record.name, _NUMBERS.sub("#", text)[:200])
        if record.msg not in RATE_LIMITED_EVENTS:
            return None
        text = str(fields.get("error", ""))
        return (record.msg, str(fields.get("code", "")), _NUMBERS.sub("#", text)[:200])

    def filter(self, record: logging.LogRecord) -> bool:
        kind = self.kind(record)
        if kind is None:
            return True
        now = self.clock()
        with self._lock:
            written, left_out = self._kinds.get(kind, (None, 0))
            if written is not None and now - written < self.window_s:
                self._kinds[kind] = (written, left_out + 1)
                return False
            self._kinds[kind] = (now, 0)
            if len(self._kinds) > 1000:  # forget kinds not seen for a while
                self._kinds = {k: v for k, v in self._kinds.items() if now - v[0] < self.window_s}
        if left_out:
            record.repeated = left_out
        return True


def configure_logging(level: str) -> None:
    """Send every log record to stderr as JSON lines (replacing an earlier call's handler)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    handler.addFilter(RepeatFilter())
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn() -> a JSON line, never raw text


def log_event(level: int, event: str, exc_info: BaseException | None = None, **fields: Any) -> None:
    """Log one event with its fields (``exc_info``: add the exception's traceback)."""
    log.log(level, event, exc_info=exc_info, extra={"fields": fields})
