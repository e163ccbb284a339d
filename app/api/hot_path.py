"""Answers the commonest requests without going through routing, validation or SQL.

`GET /name/{name}` and `GET /addr/{addr}` whose answer is in the service's Answers get
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
            answers = service.answers
            folded = answers.fold(raw[6:], _fold)
            if folded is None:
                return None
            body = answers.name_body(folded)
            if body is not None:
                service.cache_counts["name", "hit"] += 1
                return "name", 200, body
            if self.serve_negative and answers.name_missing(folded):
                service.cache_counts["name", "negative_hit"] += 1
                return "name", 404, NOT_FOUND_BODY
            return None
        if raw.startswith(b"/addr/"):
            try:
                jami_id = names.normalize_jami_id(names.decode_path_segment(raw[6:]))
            except (names.BadName, names.BadAddress):
                return None
            body = service.answers.addr_body(jami_id)
            if body is not None:
                service.cache_counts["addr", "hit"] += 1
                return "addr", 200, body
        return None


def _fold(segment: bytes) -> str | None:
    """The fold of a raw `/name/` path segment; None when it is not a name to look up."""
    try:
        return names.check_lookup_name(names.decode_path_segment(segment))
    except names.BadName:
        return None
