"""The HTTP protocol uvicorn runs for `jamins serve`: its own guard against hostile clients.

uvicorn closes a keep-alive connection that stays idle after a response, but a connection
that never finishes its request headers (sent nothing at all, or half a request line) is
kept for ever, and httptools accepts a request line or headers of any length. This
protocol, a small subclass of uvicorn's httptools one, adds:

- a header timeout: a connection must finish each request's headers within
  `header_timeout` seconds of connecting (or of sending the first byte of its next
  request), else it is closed;
- a connection bound: beyond `max_connections`, the connection that has waited longest
  for its headers is closed to make room (so scanners holding sockets open cannot keep
  real clients out); when every connection is busy with a request, the new one is closed;
- size bounds: a request line past `max_url_bytes` or headers past `max_header_bytes`
  get a 400 and the connection is closed, before anything is kept for the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)

# The longest valid path is well under 200 bytes (a 32-byte name percent-encoded is 96).
MAX_URL_BYTES = 2048
MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    max_connections: int = 1000
    max_url_bytes: int = MAX_URL_BYTES
    max_header_bytes: int = MAX_HEADER_BYTES


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that is too large."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout, a connection bound and size
    bounds (see the module docstring)."""

    # Set once per process by configure(), before the server accepts connections: uvicorn
    # builds protocols from the class (and pickles it by name for --workers N).
    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    # Connections waiting for their headers, longest-waiting first: the limit closes the
    # first of them in O(1) (a scan of every connection would cost a flood dearly).
    _waiting: ClassVar[OrderedDict[GuardedHttpProtocol, None]] = OrderedDict()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._refusal: str | None = None

    @classmethod
    def configure(cls, limits: ConnectionLimits) -> None:
        cls.limits = limits

    # -- connection life -------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # The first bytes of the next request on a kept-alive connection: uvicorn cancels
        # its keep-alive timer, so the header clock starts again.
        if self._awaiting_headers and self._header_timer is None:
            self._arm_header_timer()
        super().data_received(data)

    def _make_room(self) -> None:
        for connection in self._waiting:
            if connection is not self and connection._idle():
                connection._close("connection limit reached: closed the longest-waiting one")
                return
        self._close("connection limit reached: every connection is busy")

    def _idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _close(self, why: str) -> None:
        logger.debug("closing %s: %s", self.client, why)
        self._cancel_header_timer()
        if not self.transport.is_closing():
            self.transport.close()

    # -- the header timeout ----------------------------------------------------------

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._waiting[self] = None
        self._header_timer = self.loop.call_later(
            self.limits.header_timeout, self._header_timed_out
        )

    def _cancel_header_timer(self) -> None:
        self._waiting.pop(self, None)
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        self._waiting.pop(self, None)
        if not self._awaiting_headers:
            return
        if not self._idle():
            # A previous request's answer is still being made: give the next one time.
            self._arm_header_timer()
            return
        self._close("no complete request headers within the header timeout")

    # -- parser callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers = True
        self._header_bytes = 0
        if self._header_timer is None:
            self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > self.limits.max_url_bytes:
            self._refusal = "request line too long"
            raise _Refused(self._refusal)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_bytes:
            self._refusal = "request headers too large"
            raise _Refused(self._refusal)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # The next request on this connection must bring its headers in time too; its
        # clock starts with its first byte (or uvicorn's keep-alive timeout closes it).
        self._awaiting_headers = True

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to a request it cannot parse (malformed, or refused above):
        # JSON like every other answer, and the connection closed.
        self._cancel_header_timer()
        body = json.dumps({"error": self._refusal or "invalid HTTP request"}).encode()
        self._refusal = None
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()
