"""Answers the commonest requests before anything else runs.

`GET`/`HEAD /name/{name}` and `/addr/{addr}` whose answer is in the service's answer cache
(app/services/answers.py) get its bytes straight away, and, when this process is the only
one writing its database, a name the chain was just found not to hold (the negative cache,
which is what an availability check asks at every keystroke) gets its 404. A name SQL
holds is answered from one point read (app.db.LookupReader). A registration (`POST
/name/{name}`) is answered here too, through the route's own function
(app.api.routes.accept_registration). Anything else, or anything this cannot decide, goes
on to the application unchanged.

It is the outermost ASGI app (app.main wraps the whole middleware stack in it), so it does
itself, cheaply, what an operator relies on from the stack for the requests it answers: the
path prefix, the path bound, HEAD, the request id (X-Request-ID, and on the access line),
the per-route request count and latency, and for registrations the request timeout and the
error rendering. It writes the access line of every answer,
its own and the stack's (app.logs.AccessLog: uvicorn's own access log is off).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import names
from app.api.routes import accept_registration
from app.errors import InvalidName, JaminsError, error_response
from app.logs import AccessLog, given_or_new_request_id, request_id
from app.middlewares import MAX_PATH_BYTES, timed_out
from app.services.registry import KNOWN_FREE, NameService

if TYPE_CHECKING:
    from app.metrics import Metrics

NOT_FOUND_BODY = b'{"error":"name not registered"}'
# What FastAPI renders for the route's RegisterAnswer, and Starlette's ServerErrorMiddleware
# for an unexpected exception.
REGISTERED = JSONResponse({"success": True})
REGISTRATION_FAILED = PlainTextResponse("Internal Server Error", status_code=500)
NAME_ROUTE = "/name/{name:path}"
ADDR_ROUTE = "/addr/{addr:path}"
_JSON = (b"content-type", b"application/json")
FLUSH_EVERY = 256
FLUSH_SECONDS = 1.0


def _fold(segment: bytes) -> str | None:
    """The fold of a raw `/name/` path segment; None when it is not a name to look up."""
    try:
        return names.check_lookup_name(names.decode_path_segment(segment))
    except names.BadName:
        return None


def _log_access(access_log: AccessLog, scope: Scope, status: int) -> None:
    """The access line of the answer to `scope` (uvicorn's words: the path as asked)."""
    access_log.line(
        scope.get("client"),
        scope["method"],
        scope["path"],
        scope.get("query_string", b""),
        scope.get("http_version", "1.1"),
        status,
    )


class HotPath:
    """The ASGI app around `app` that answers answer-cache hits itself.

    `service` gives the running NameService (None before the lifespan built it);
    `serve_negative` whether a cached "free" may be answered without SQL (only when no
    other process writes the database); `prefix` the API's path prefix (served at the root
    too); `metrics` where the per-route request count and latency go."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: Callable[[], NameService | None],
        serve_negative: bool,
        prefix: str = "",
        metrics: Metrics | None = None,
        access_log: AccessLog | None = None,
        max_path_bytes: int = MAX_PATH_BYTES,
        read_timeout: float = 5.0,
        request_timeout: float = 30.0,
    ) -> None:
        self.app = app
        self.access_log = access_log
        self.service = service
        self.serve_negative = serve_negative
        self.prefix = prefix.encode()
        self.metrics = metrics
        self.max_path_bytes = max_path_bytes
        # A read of SQL over the network gives up after this long (the stack then
        # answers, within its own request timeout).
        self.read_timeout = read_timeout
        # A registration not answered within this long is answered 503 (as the stack's
        # TimeoutMiddleware does for the requests it serves).
        self.request_timeout = request_timeout
        # (route, method, status) -> (count child, latency child): labels() looks its
        # child up under a lock, once per request otherwise.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        # Answers not yet counted in `metrics`: a counter and a histogram update take a
        # lock each, a list append does not. Counted before any request goes on to the
        # stack (a scrape of /metrics is one), every FLUSH_EVERY answers, and at least
        # every FLUSH_SECONDS while answers come.
        self._uncounted: list[tuple[str, str, int, float]] = []
        self._counted_at = time.perf_counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method = scope["method"]
            if method == "GET" or method == "HEAD":
                service = self.service()
                if service is not None:
                    started = time.perf_counter()
                    answer = self._answer(service, scope)
                    if answer is not None and len(answer) == 2:
                        answer = await self._stored(service, *answer)
                    if answer is not None:
                        await self._send(scope, send, method, started, *answer)
                        return
            elif method == "POST":
                service = self.service()
                raw = self._api_path(scope)
                if service is not None and raw is not None and raw.startswith(b"/name/"):
                    await self._register(service, scope, receive, send, raw[6:])
                    return
        if self._uncounted:
            self.count_answers()
        if self.access_log is not None and scope["type"] == "http":
            send = self._logging(scope, send, self.access_log)
        await self.app(scope, receive, send)

    @staticmethod
    def _logging(scope: Scope, send: Send, access_log: AccessLog) -> Send:
        """`send`, writing the access line as the answer starts (where uvicorn did)."""

        async def send_and_log(message: Message) -> None:
            if message["type"] == "http.response.start":
                _log_access(access_log, scope, message["status"])
            await send(message)

        return send_and_log

    def _answer(
        self, service: NameService, scope: Scope
    ) -> tuple[str, int, bytes] | tuple[str, str] | None:
        """The answer from memory; or (route, key) to read from SQL; or None."""
        raw = self._api_path(scope)
        if raw is None:
            return None
        if raw.startswith(b"/name/"):
            answers = service.answers
            folded = answers.fold(raw[6:], _fold)
            if folded is None:
                return None
            body = answers.name_body(folded)
            if body is not None:
                service.cache_counts["name", "cache_hit"] += 1
                return NAME_ROUTE, 200, body
            if self.serve_negative and answers.name_missing(folded):
                service.cache_counts["name", "negative_hit"] += 1
                return NAME_ROUTE, 404, NOT_FOUND_BODY
            return NAME_ROUTE, folded
        if raw.startswith(b"/addr/"):
            try:
                jami_id = names.normalize_jami_id(names.decode_path_segment(raw[6:]))
            except (names.BadName, names.BadAddress):
                return None
            body = service.answers.addr_body(jami_id)
            if body is not None:
                service.cache_counts["addr", "cache_hit"] += 1
                return ADDR_ROUTE, 200, body
            return ADDR_ROUTE, jami_id
        return None

    def _api_path(self, scope: Scope) -> bytes | None:
        """The raw path without the API's prefix; None when the stack must refuse it."""
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        if len(raw) + len(scope.get("query_string", b"")) > self.max_path_bytes:
            return None  # the stack refuses it (400)
        prefix = self.prefix
        if prefix and raw.startswith(prefix) and raw[len(prefix) : len(prefix) + 1] == b"/":
            raw = raw[len(prefix) :]
        return raw

    async def _stored(
        self, service: NameService, route: str, key: str
    ) -> tuple[str, int, bytes] | None:
        """A first lookup SQL alone answers (a name it holds, an ID one of its names
        proves), answered here: the route would read the same rows at many times the
        cost. Anything else (not in SQL, pending, any error) goes on to the stack, which
        decides and renders it."""
        read = service.stored_name_body if route == NAME_ROUTE else service.stored_addr_body
        try:
            if service.reader.sqlite_path is not None:
                body = await read(key)  # never leaves the loop
            else:
                async with asyncio.timeout(self.read_timeout):
                    body = await read(key)
        except (JaminsError, TimeoutError):
            return None
        if body is KNOWN_FREE:
            # SQL, read just now, has no row: the cached "free" holds even for a database
            # other servers write (the route would read again and say the same).
            return route, 404, NOT_FOUND_BODY
        return None if body is None else (route, 200, body)

    async def _send(
        self,
        scope: Scope,
        send: Send,
        method: str,
        started: float,
        route: str,
        status: int,
        body: bytes,
    ) -> None:
        current = given_or_new_request_id(scope.get("headers") or [])
        # Set while the answer is sent: the access line and any log line carry it.
        token = request_id.set(current)
        try:
            if self.access_log is not None:
                _log_access(self.access_log, scope, status)
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        _JSON,
                        (b"content-length", str(len(body)).encode()),
                        (b"x-request-id", current.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body if method == "GET" else b""})
        finally:
            request_id.reset(token)
            self._count(route, method, status, started)

    def _count(self, route: str, method: str, status: int, started: float) -> None:
        """Counts an answer in the metrics (in batches: see _uncounted)."""
        if self.metrics is not None:
            ended = time.perf_counter()
            self._uncounted.append((route, method, status, ended - started))
            if len(self._uncounted) >= FLUSH_EVERY or ended - self._counted_at > FLUSH_SECONDS:
                self.count_answers()

    async def _register(
        self, service: NameService, scope: Scope, receive: Receive, send: Send, segment: bytes
    ) -> None:
        """POST /name/NAME, answered as the route (app.api.routes.post_name) and the
        stack's middlewares would: the same work (accept_registration), error rendering,
        request timeout, request id, count and access line, without FastAPI's routing,
        dependencies and middleware layers, which cost a registration more of the loop
        than its own checks (BENCHMARKS.md, section 2)."""
        started = time.perf_counter()
        current = given_or_new_request_id(scope.get("headers") or [])
        token = request_id.set(current)
        status = 500
        try:
            try:
                async with asyncio.timeout(self.request_timeout):
                    response = await self._registration(service, scope, receive, segment)
            except TimeoutError:
                response = timed_out(scope)
            except ClientDisconnect:
                return  # nothing to answer, nothing registered
            except Exception:
                # As Starlette's ServerErrorMiddleware: a plain 500, the exception to
                # uvicorn (which logs it).
                await self._respond(scope, send, current, REGISTRATION_FAILED)
                raise
            status = response.status_code
            await self._respond(scope, send, current, response)
        finally:
            request_id.reset(token)
            self._count(NAME_ROUTE, "POST", status, started)

    async def _registration(
        self, service: NameService, scope: Scope, receive: Receive, segment: bytes
    ) -> Response:
        try:
            name = names.decode_path_segment(segment.split(b"?", 1)[0])
        except names.BadName:
            return error_response(InvalidName(), "POST")
        declared = None
        for header, value in scope.get("headers") or ():
            if header == b"content-length":
                declared = value.decode("latin-1")
                break
        client = scope.get("client")
        try:
            await accept_registration(
                service,
                name,
                declared_length=declared,
                chunks=_body(receive),
                client=client[0] if client else None,
            )
        except JaminsError as exc:
            return error_response(exc, "POST")
        return REGISTERED

    async def _respond(self, scope: Scope, send: Send, current: str, response: Response) -> None:
        if self.access_log is not None:
            _log_access(self.access_log, scope, response.status_code)
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [*response.raw_headers, (b"x-request-id", current.encode())],
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    def count_answers(self) -> None:
        """Put the answers given since the last call into the request metrics."""
        uncounted, self._uncounted = self._uncounted, []
        self._counted_at = time.perf_counter()
        if self.metrics is None:
            return
        for route, method, status, seconds in uncounted:
            key = (route, method, status)
            children = self._children.get(key)
            if children is None:
                children = (
                    self.metrics.requests.labels(route, method, str(status)),
                    self.metrics.latency.labels(route, method),
                )
                self._children[key] = children
            children[0].inc()
            children[1].observe(seconds)


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    """The request body's chunks, as Starlette's Request.stream() gives them."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


class HotPathApp(FastAPI):
    """A FastAPI app whose `hot_path`, once set, sees every request before the app's own
    middleware stack (which FastAPI's add_middleware can only put inside its own error
    and body-limit layers)."""

    hot_path: HotPath | None = None

    async def stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app without its hot path: what HotPath hands the rest to."""
        await super().__call__(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot_path = self.hot_path
        if hot_path is None:
            await super().__call__(scope, receive, send)
        else:
            await hot_path(scope, receive, send)
