"""The ASGI middlewares around the API: request bounds, HEAD, timeouts, the path prefix.

Order (outermost first, see app.main.create_app): RequestBoundsMiddleware refuses what is
too large before anything else keeps state for the request; HeadMiddleware turns HEAD into
a GET without a body; then request ids, metrics and the timeout. The hot path
(app.api.hot_path) is outside them all: it answers what it can before any of them runs,
doing their cheap parts itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import RETRY_AFTER_SECONDS
from app.logs import short_path
from app.serving import MAX_URL_BYTES

logger = logging.getLogger(__name__)

# The server protocol (app.serving) refuses longer request lines before they reach the
# app; the same bound here holds under any ASGI server.
MAX_PATH_BYTES = MAX_URL_BYTES


class RequestBoundsMiddleware:
    """400 for a path (with its query) longer than `max_path_bytes`, before any other
    middleware or route keeps anything for the request."""

    def __init__(self, app: ASGIApp, max_path_bytes: int = MAX_PATH_BYTES) -> None:
        self.app = app
        self.max_path_bytes = max_path_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw: bytes = scope.get("raw_path") or scope["path"].encode()
            if len(raw) + len(scope.get("query_string", b"")) > self.max_path_bytes:
                body: dict[str, object] = {"error": "request path too long"}
                if scope["method"] == "POST":
                    body = {"success": False, **body}
                await JSONResponse(body, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class HeadMiddleware:
    """HEAD is answered as the GET of the same path, without the body (load balancers
    probe /healthz with HEAD)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_without_body)


class TimeoutMiddleware:
    """Answer 503 to any request not answered within `seconds`: clients never time out."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            async with asyncio.timeout(self.seconds):
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if started:
                raise
            await timed_out(scope)(scope, receive, send)


def timed_out(scope: Scope) -> JSONResponse:
    """The answer to a request not answered in time (logged here)."""
    logger.warning("request timed out: %s %s", scope["method"], short_path(scope["path"]))
    body: dict[str, object] = {"error": "request timed out"}
    if scope["method"] == "POST":
        # Registration answers always say whether they succeeded (PROTOCOL.md §1).
        body = {"success": False, **body}
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


class PathPrefixMiddleware:
    """Serve the API under `prefix` as well as at the root (PROTOCOL.md §1)."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix
        self.raw_prefix = prefix.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            scope["path"] == self.prefix or scope["path"].startswith(self.prefix + "/")
        ):
            scope = dict(scope)
            scope["path"] = scope["path"][len(self.prefix) :] or "/"
            raw = scope.get("raw_path")
            if raw is not None and raw.startswith(self.raw_prefix):
                scope["raw_path"] = raw[len(self.raw_prefix) :] or b"/"
        await self.app(scope, receive, send)


class StartupErrorMiddleware:
    """A start-up the operator can fix fails with one line, not a traceback: Starlette
    reports a failed lifespan with the whole traceback as its message, which uvicorn logs;
    `describe()` gives the one line instead (None: keep the traceback, it is a bug)."""

    def __init__(self, app: ASGIApp, describe: Callable[[], str | None]) -> None:
        self.app = app
        self.describe = describe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_short(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                short = self.describe()
                if short is not None:
                    message = {**message, "message": short}
            await send(message)

        await self.app(scope, receive, send_short)
