"""Logging: plain text or one JSON object per line (EVLINK_LOG_FORMAT), with the request id.

A line never holds a raw control character: a client's text in a message (a
path with ``%0a`` in it) cannot start a line of its own, recolour a terminal or
hide what precedes it. The text format escapes them (``\\x0a``) in the message
line; JSON escapes them anyway. A traceback keeps its own line breaks.

A client's mistake is logged at most at INFO, without a traceback. evlink's own
code keeps to that; uvicorn logs a few mistakes of clients (a malformed HTTP
request, a websocket text frame that is not UTF-8) as warnings or errors with a
traceback, and :class:`_ClientMistakes` turns those down to INFO.

One of those lines is uvicorn's mistake rather than the client's: uvicorn 0.54's
websockets-sansio protocol logs "ASGI callable returned without completing handshake."
at ERROR after every handshake the app refuses with an HTTP answer (the ASGI
``websocket.http.response`` extension: evlink's 429 past
``EVLINK_WS_PENDING_PER_ADDRESS``), answer sent or not: it never marks such a
handshake complete (wsproto's protocol does; Kludex/uvicorn#3138 fixes it). A flood
of refused handshakes would write an ERROR line each; it is INFO too.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from evlink.requestid import current_request_id

__all__ = ["configure_logging"]


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


# C0 controls, DEL, C1 controls (NEL among them) and the Unicode line and paragraph
# separators: each starts a new line for some reader of the log.
_ESCAPES = {
    code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
}


class TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).translate(_ESCAPES)


class _ClientMistakes(logging.Filter):
    """uvicorn's log lines about a client's mistake, at INFO and without a traceback."""

    MESSAGES = frozenset(
        {
            "Invalid HTTP request received.",
            "Unsupported upgrade request.",
            "Invalid UTF-8 sequence received from client.",
            # After any denial response, however well formed (see the module's docstring).
            "ASGI callable returned without completing handshake.",
        }
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in self.MESSAGES and record.levelno > logging.INFO:
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
            record.exc_info = record.exc_text = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, log_format: str) -> None:
    """Root logging for the process; uvicorn's loggers go through it too."""
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            TextFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    # evlink.edge writes the access log (with the request id and the time taken): uvicorn's
    # own line for each request would double it, and costs the request its formatting.
    logging.getLogger("uvicorn.access").propagate = False
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _ClientMistakes) for f in uvicorn_errors.filters):
        uvicorn_errors.addFilter(_ClientMistakes())
