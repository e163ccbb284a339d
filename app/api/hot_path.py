"""Answers the commonest requests without going through routing, validation or SQL.

`GET /name/{name}` and `GET /addr/{addr}` whose answer is in the service's HotCache get
its bytes straight away, and, when this process is the only one writing its database, a
name the chain was just found not to hold (the negative cache, which is what an
availability check asks at every keystroke) gets its 404. Anything else, or anything this
cannot decide, goes on to the application unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

from starlette.types import ASGIApp, Receive, Scope, Send

from app import names
from app.services.registry import NameService

NOT_FOUND_BODY = b'{"error":"name not registered"}'
# What routing would have put in scope["route"]: the metrics label requests by its path.
_ROUTES = {
    "name": SimpleNamespace(path="/name/{name:path}"),
    "addr": SimpleNamespace(path="/addr/{addr:path}"),
}
_JSON = (b"content-type", b"application/json")
# The memo is bounded by entries and by bytes; a segment longer than any valid name
# percent-encoded (32 bytes, 3 characters each) is never kept, so a client sending
# distinct long paths costs nothing that lasts.
_MEMO_LIMIT = 20_000
_MEMO_MAX_BYTES = 4 * 1024 * 1024
_MEMO_MAX_SEGMENT = 3 * names.MAX_BYTES


class HotPathMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        service: Callable[[], NameService | None],
        serve_negative: bool = True,
    ) -> None:
        self.app = app
        self.service = service
        self.serve_negative = serve_negative
        # Raw path segment -> fold (or None when invalid), so repeated lookups skip the
        # name policy's per-character checks.
        self._folds: dict[bytes, str | None] = {}
        self._folds_bytes = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            service = self.service()
            raw: bytes = scope.get("raw_path") or scope["path"].encode()
            if service is not None:
                answer = self._answer(service, raw)
                if answer is not None:
                    kind, status, body = answer
                    scope["route"] = _ROUTES[kind]
                    await send(
                        {
                            "type": "http.response.start",
                            "status": status,
                            "headers": [_JSON, (b"content-length", str(len(body)).encode())],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)

    def _answer(self, service: NameService, raw: bytes) -> tuple[str, int, bytes] | None:
        if raw.startswith(b"/name/"):
            folded = self._fold(raw[6:])
            if folded is None:
                return None
            body = service.hot.names.get(folded)
            if body is not None:
                service.cache_counts["name", "hit"] += 1
                return "name", 200, body
            if self.serve_negative and folded in service.hot.missing_names:
                service.cache_counts["name", "negative_hit"] += 1
                return "name", 404, NOT_FOUND_BODY
            return None
        if raw.startswith(b"/addr/"):
            try:
                jami_id = names.normalize_jami_id(names.decode_path_segment(raw[6:]))
            except (names.BadName, names.BadAddress):
                return None
            body = service.hot.addrs.get(jami_id)
            if body is not None:
                service.cache_counts["addr", "hit"] += 1
                return "addr", 200, body
        return None

    def _fold(self, segment: bytes) -> str | None:
        if segment in self._folds:
            return self._folds[segment]
        folded: str | None
        try:
            folded = names.check_lookup_name(names.decode_path_segment(segment))
        except names.BadName:
            folded = None
        if len(segment) > _MEMO_MAX_SEGMENT:
            return folded
        size = len(segment) + len(folded or "") * 4
        if len(self._folds) >= _MEMO_LIMIT or self._folds_bytes + size > _MEMO_MAX_BYTES:
            self._folds.clear()
            self._folds_bytes = 0
        self._folds[segment] = folded
        self._folds_bytes += size
        return folded
