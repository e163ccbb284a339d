"""Logging: configured once at start, with the request id on every line."""

from __future__ import annotations

import asyncio
import atexit
import itertools
import json
import logging
import os
import re
import secrets
import sys
import time
import urllib.parse
from contextvars import ContextVar
from typing import TextIO

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


# Access lines wait at most this long in AccessLog's buffer, and at most this many bytes.
ACCESS_FLUSH_SECONDS = 0.1
ACCESS_BUFFER_BYTES = 64 * 1024
# One write(2) of at most this many bytes: what a pipe writes whole (Linux PIPE_BUF), so
# the lines of several worker processes on one stderr never cut into each other.
_ATOMIC_WRITE = 4096


class AccessLog:
    """The access line of every answer, in uvicorn's words and this log's format, written
    in batches.

    uvicorn's own access log makes a `logging` record per request: two filters, the
    handler's lock, formatting, and a write and flush of stderr, a system call per request
    (a fifth of the cost of an answer from the cache, and as much as the answer's own
    writes). Here the line is formatted directly and kept in a buffer, written when it
    has waited ACCESS_FLUSH_SECONDS or holds ACCESS_BUFFER_BYTES, before any other log
    line (so the lines stay in order), and at exit. A kill -9 loses at most the access
    lines of the last ACCESS_FLUSH_SECONDS; never another line.
    """

    def __init__(self) -> None:
        self.stream: TextIO | None = None  # None: off (not configured, or level above info)
        self.json = False
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def configure(self, stream: TextIO | None, *, json_lines: bool) -> None:
        self.flush()
        self.stream = stream
        self.json = json_lines

    def line(
        self,
        client: tuple[str, int] | None,
        method: str,
        path: str,
        query: bytes,
        http_version: str,
        status: int,
    ) -> None:
        """One answer's line: `path` is the request's decoded path (quoted here, as
        uvicorn does), cut to LOGGED_PATH_CHARS."""
        if self.stream is None:
            return
        target = urllib.parse.quote(path)
        if query:
            target = f"{target}?{query.decode('ascii', 'replace')}"
        address = f"{client[0]}:{client[1]}" if client else ""
        message = f'{address} - "{method} {short_path(target)} HTTP/{http_version}" {status}'
        now = time.time()
        second = int(now)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
            self._second = second
        stamp = f"{self._stamp},{int((now - second) * 1000):03d}"
        if self.json:
            entry = {
                "time": stamp,
                "level": "INFO",
                "request_id": request_id.get(),
                "logger": "uvicorn.access",
                "message": message,
            }
            text = json.dumps(entry, ensure_ascii=False) + "\n"
        else:
            text = f"{stamp} INFO [{request_id.get()}] uvicorn.access: {message}\n"
        self._lines.append(text)
        self._size += len(text)
        if self._size >= ACCESS_BUFFER_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
            else:
                self._timer = loop.call_later(ACCESS_FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines or self.stream is None:
            self._lines.clear()
            self._size = 0
            return
        lines, self._lines, self._size = self._lines, [], 0
        chunk: list[str] = []
        size = 0
        for text in lines:
            length = len(text.encode())
            if chunk and size + length > _ATOMIC_WRITE:
                self._write("".join(chunk))
                chunk, size = [], 0
            chunk.append(text)
            size += length
        self._write("".join(chunk))

    def _write(self, text: str) -> None:
        assert self.stream is not None
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr closed or gone: as logging's handler, never fail the caller


ACCESS_LOG = AccessLog()
atexit.register(ACCESS_LOG.flush)


class _AccessLinesFirst(logging.StreamHandler):  # type: ignore[type-arg]
    """The log's handler: writes the waiting access lines before each line of its own."""

    def emit(self, record: logging.LogRecord) -> None:
        ACCESS_LOG.flush()
        super().emit(record)


def configure_logging(level: str, log_format: str = "text", *, access_log: bool = False) -> None:
    """Log at `level` on stderr in `log_format`; with `access_log` (and `level` info or
    lower) an access line per answer through ACCESS_LOG."""
    handler = _AccessLinesFirst(sys.stderr)
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
    writes_access = access_log and logging.getLogger("uvicorn.access").isEnabledFor(logging.INFO)
    ACCESS_LOG.configure(sys.stderr if writes_access else None, json_lines=log_format == "json")
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
