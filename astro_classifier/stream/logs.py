"""Structured logging of the Kafka worker: one JSON object per line on stderr.

Every line has ``ts`` (UTC, ISO 8601), ``level`` and ``event``; :func:`log_event` adds the
event's fields. Records of other loggers (librdkafka, a library warning) become
``event: "log"`` with ``logger`` and ``message``, so the stream stays machine-readable.
"""

from __future__ import annotations

import json
import logging
import sys
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
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure_logging(level: str) -> None:
    """Send every log record to stderr as JSON lines (replacing an earlier call's handler)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn() -> a JSON line, never raw text


def log_event(level: int, event: str, exc_info: BaseException | None = None, **fields: Any) -> None:
    """Log one event with its fields (``exc_info``: add the exception's traceback)."""
    log.log(level, event, exc_info=exc_info, extra={"fields": fields})
