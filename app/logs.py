"""Logging: configured once at start, with the request id on every line."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import secrets
import sys
import time
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id: ContextVar[str] = ContextVar("request_id", default="-")

_ACCEPTED_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class _RequestIds:
    """Ids unique across processes and requests, without a system call each: a random
    prefix per process and a counter (an id names a request in the logs; nothing secret
    hangs on it, so it need not be unpredictable)."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.prefix = secrets.token_hex(4)
        self.counter = itertools.count(1)

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter):08x}"


_request_ids = _RequestIds()
# A forked worker must not repeat its parent's ids.
os.register_at_fork(after_in_child=_request_ids.reseed)


def new_request_id() -> str:
    """A fresh request id: 16 hex characters or more."""
    return _request_ids.next()


def given_or_new_request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's X-Request-ID when sane, else a new one."""
    for name, value in headers:
        if name == b"x-request-id":
            given = value.decode("latin-1")
            return given if _ACCEPTED_ID.match(given) else new_request_id()
    return new_request_id()


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record as `request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per line: time, level, request_id, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "request_id": getattr(record, "request_id", "-"),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The text line format, with the time string made once per second rather than once
    per line (every request writes an access line; strftime was most of its cost)."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"


# Paths in log lines are cut to this many characters.
LOGGED_PATH_CHARS = 200


def short_path(path: str) -> str:
    """`path` cut for a log line (a hostile client may send kilobytes of it)."""
    if len(path) <= LOGGED_PATH_CHARS:
        return path
    return f"{path[:LOGGED_PATH_CHARS]}...({len(path)} chars)"


class ShortAccessLineFilter(logging.Filter):
    """Cuts the path of uvicorn's access lines: a scanner's path may be kilobytes long."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], short_path(args[2]), *args[3:])
        return True


def configure_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonLinesFormatter())
    else:
        handler.setFormatter(
            TextFormatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    access = logging.getLogger("uvicorn.access")
    access.filters[:] = [f for f in access.filters if not isinstance(f, ShortAccessLineFilter)]
    access.addFilter(ShortAccessLineFilter())
    # web3 logs request payloads at DEBUG, and a payload holds signed transactions.
    logging.getLogger("web3").setLevel(max(logging.INFO, root.level))


class RequestIdMiddleware:
    """Gives each request an id (the caller's X-Request-ID when sane), for logs and the
    response's X-Request-ID header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        current = given_or_new_request_id(scope.get("headers") or [])
        token = request_id.set(current)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", current.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
