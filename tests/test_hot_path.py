"""The hot path (app/api/hot_path.py), in process: what it answers itself and how."""

from __future__ import annotations

import asyncio
from typing import Any

from app.api.hot_path import ADDR_ROUTE, FLUSH_EVERY, NAME_ROUTE, NOT_FOUND_BODY, HotPath
from app.db import NameRow
from app.logs import request_id
from app.metrics import Metrics
from app.services.registry import NameService

BODY = b'{"name":"alice","addr":"0x' + b"a" * 40 + b'"}'
JAMI_ID = "b" * 40


class FakeReader:
    """SQL as app.db.LookupReader reads it, on the loop: rows by fold."""

    sqlite_path = "fake"

    def __init__(self) -> None:
        self.rows = {
            "carol": NameRow("Carol", "carol", "c" * 40, "0" * 40, "pk", "sig", False),
            "dan": NameRow("dan", "dan", "d" * 40, "0" * 40, "pk", "sig", True),
        }
        self.reads: list[str] = []

    async def name(self, folded: str) -> NameRow | None:
        self.reads.append(folded)
        return self.rows.get(folded)

    async def pointing_at(self, jami_id: str, limit: int) -> list[NameRow]:
        rows = [row for row in self.rows.values() if row.addr == jami_id]
        return sorted(rows, key=lambda row: (not row.pending, row.name))[:limit]


def make_service(*, serve_pending: bool = False) -> NameService:
    service = NameService(
        serve_pending=serve_pending,
        sessionmaker=None,  # type: ignore[arg-type]
        registrar=None,
        negative_cache_seconds=5,
        registrations_enabled=False,
        lookup_cache_seconds=10,
        reader=FakeReader(),  # type: ignore[arg-type]
    )
    answers = service.answers
    answers.keep_name("alice", BODY, answers.stamp())
    answers.keep_missing_name("free", answers.stamp())
    answers.keep_addr(JAMI_ID, b'{"name":"bob"}', answers.stamp())
    return service


class Inner:
    """The rest of the stack: records what reached it."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope.get("raw_path", b"").decode())
        await send({"type": "http.response.start", "status": 599, "headers": []})
        await send({"type": "http.response.body", "body": b"inner"})


def call(
    hot_path: HotPath,
    path: str,
    *,
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    query: bytes = b"",
) -> tuple[int, dict[bytes, bytes], bytes, list[str]]:
    """(status, headers, body, request id current at each send) of one request."""
    sent: list[dict[str, Any]] = []
    ids: list[str] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        ids.append(request_id.get())  # what uvicorn's access line would carry
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": headers or [],
    }
    asyncio.run(hot_path(scope, receive, send))  # type: ignore[arg-type]
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"], ids


def make_hot_path(
    service: NameService | None, *, serve_negative: bool = True, prefix: str = ""
) -> tuple[HotPath, Inner, Metrics]:
    inner = Inner()
    metrics = Metrics(lambda: None)
    hot_path = HotPath(
        inner,
        service=lambda: service,
        serve_negative=serve_negative,
        prefix=prefix,
        metrics=metrics,
    )
    return hot_path, inner, metrics


def count(hot_path: HotPath, metrics: Metrics, route: str, method: str, status: str) -> float:
    """The request count a scrape shows (a scrape goes on to the stack, which counts what
    the hot path answered first)."""
    call(hot_path, "/metrics")
    value = metrics.registry.get_sample_value(
        "jamins_http_requests_total", {"route": route, "method": method, "status": status}
    )
    return value or 0.0


def test_hit_is_answered_with_its_bytes_an_id_and_a_count() -> None:
    service = make_service()
    hot_path, inner, metrics = make_hot_path(service)
    status, headers, body, ids = call(hot_path, "/name/Alice")
    assert (status, body) == (200, BODY)
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == str(len(BODY)).encode()
    assert len(headers[b"x-request-id"]) >= 16
    assert ids == [headers[b"x-request-id"].decode()] * 2
    assert request_id.get() == "-"  # reset once answered
    assert inner.paths == []
    assert count(hot_path, metrics, NAME_ROUTE, "GET", "200") == 1
    # Told apart from the answers SQL gives ("hit") in jamins_cache_lookups_total.
    assert service.cache_counts == {("name", "cache_hit"): 1}


def test_sane_request_id_is_echoed_and_others_replaced() -> None:
    hot_path, _, _ = make_hot_path(make_service())
    _, headers, _, _ = call(hot_path, "/name/alice", headers=[(b"x-request-id", b"abc-1")])
    assert headers[b"x-request-id"] == b"abc-1"
    _, headers, _, _ = call(hot_path, "/name/alice", headers=[(b"x-request-id", b"a b")])
    assert headers[b"x-request-id"] != b"a b"


def test_head_has_the_get_headers_and_no_body() -> None:
    hot_path, _, metrics = make_hot_path(make_service())
    status, headers, body, _ = call(hot_path, "/name/alice", method="HEAD")
    assert (status, body) == (200, b"")
    assert headers[b"content-length"] == str(len(BODY)).encode()
    assert count(hot_path, metrics, NAME_ROUTE, "HEAD", "200") == 1


def test_reverse_hit_and_prefix() -> None:
    hot_path, inner, metrics = make_hot_path(make_service(), prefix="/jamins")
    status, _, body, _ = call(hot_path, "/jamins/addr/0x" + JAMI_ID)
    assert (status, body) == (200, b'{"name":"bob"}')
    assert call(hot_path, "/name/alice")[2] == BODY  # at the root too
    assert call(hot_path, "/jaminsx/name/alice")[0] == 599
    assert inner.paths == ["/jaminsx/name/alice"]
    assert count(hot_path, metrics, ADDR_ROUTE, "GET", "200") == 1


def test_negative_hit_without_sql_only_when_this_process_is_the_only_writer() -> None:
    service = make_service()
    hot_path, _, metrics = make_hot_path(service)
    status, _, body, _ = call(hot_path, "/name/free")
    assert (status, body) == (404, NOT_FOUND_BODY)
    assert count(hot_path, metrics, NAME_ROUTE, "GET", "404") == 1
    assert service.cache_counts["name", "negative_hit"] == 1
    assert service.reader.reads == []  # type: ignore[attr-defined]


def test_negative_hit_of_a_shared_database_is_answered_once_sql_has_no_row() -> None:
    """Another server may have taken the name: the cached "free" is answered only after
    this request's own read finds no row, as the route would, and here (the route read SQL
    a second time and went through the error handling)."""
    service = make_service()
    shared, inner, metrics = make_hot_path(service, serve_negative=False)
    status, _, body, _ = call(shared, "/name/free")
    assert (status, body) == (404, NOT_FOUND_BODY)
    assert service.reader.reads == ["free"]  # type: ignore[attr-defined]
    assert service.cache_counts["name", "negative_hit"] == 1
    assert count(shared, metrics, NAME_ROUTE, "GET", "404") == 1
    # Not known free (never asked the chain): the route decides.
    assert call(shared, "/name/unknown")[0] == 599
    assert inner.paths == ["/metrics", "/name/unknown"]


def test_anything_else_goes_to_the_stack() -> None:
    hot_path, inner, _ = make_hot_path(make_service())
    assert call(hot_path, "/name/bob")[0] == 599  # not cached
    assert call(hot_path, "/name/a%2Fb")[0] == 599  # not a name
    assert call(hot_path, "/name/alice/owner")[0] == 599
    assert call(hot_path, "/name/alice", method="POST")[0] == 599
    assert call(hot_path, "/name/alice", query=b"x" * 20_000)[0] == 599  # the stack's 400
    assert len(inner.paths) == 5


def test_before_the_service_starts_everything_goes_to_the_stack() -> None:
    hot_path, inner, _ = make_hot_path(None)
    assert call(hot_path, "/name/alice")[0] == 599
    assert inner.paths == ["/name/alice"]


def test_answers_are_counted_by_the_next_request_that_goes_on() -> None:
    hot_path, _, metrics = make_hot_path(make_service())
    for _ in range(3):
        call(hot_path, "/name/alice")
    assert count(hot_path, metrics, NAME_ROUTE, "GET", "200") == 3
    latency = metrics.registry.get_sample_value(
        "jamins_http_request_duration_seconds_count", {"route": NAME_ROUTE, "method": "GET"}
    )
    assert latency == 3


def test_answers_are_counted_in_batches_without_other_requests() -> None:
    hot_path, _, metrics = make_hot_path(make_service())
    for _ in range(FLUSH_EVERY):
        call(hot_path, "/name/alice")
    value = metrics.registry.get_sample_value(
        "jamins_http_requests_total", {"route": NAME_ROUTE, "method": "GET", "status": "200"}
    )
    assert value == FLUSH_EVERY


def test_name_held_in_sql_is_answered_from_one_read_and_kept() -> None:
    service = make_service()
    hot_path, inner, metrics = make_hot_path(service)
    expected = b'{"name":"Carol","addr":"0x' + b"c" * 40 + b'","publickey":"pk","signature":"sig"}'
    assert call(hot_path, "/name/CAROL")[:3:2] == (200, expected)
    assert call(hot_path, "/name/carol")[:3:2] == (200, expected)
    assert service.reader.reads == ["carol"]  # type: ignore[attr-defined]
    assert inner.paths == []
    assert count(hot_path, metrics, NAME_ROUTE, "GET", "200") == 2


def test_pending_name_in_sql_goes_to_the_stack() -> None:
    """Only the route knows to answer a pending registration 503 (or serve it)."""
    hot_path, inner, _ = make_hot_path(make_service())
    assert call(hot_path, "/name/dan")[0] == 599
    assert inner.paths == ["/name/dan"]


def test_first_lookup_that_raced_a_change_is_answered_but_not_kept() -> None:
    """A read of SQL over the network yields; a write landing meanwhile (the indexer, a
    registration) forgets the name: what the read saw may be answered, never kept."""
    service = make_service()
    reader: FakeReader = service.reader  # type: ignore[assignment]
    read = reader.name

    async def read_while_the_name_changes(folded: str) -> NameRow | None:
        row = await read(folded)
        service.answers.changed(folded_names=[folded])
        return row

    reader.name = read_while_the_name_changes  # type: ignore[method-assign]
    hot_path, _, _ = make_hot_path(service)
    assert call(hot_path, "/name/carol")[0] == 200
    assert service.answers.name_body("carol") is None


def test_id_a_pending_registration_in_sql_proves_is_answered_and_not_kept() -> None:
    """Accepted here, its proof checked then: the only writer serves it, never keeps it."""
    service = make_service(serve_pending=True)
    hot_path, inner, _ = make_hot_path(service)
    status, _, body, _ = call(hot_path, "/addr/" + "d" * 40)
    assert (status, body) == (200, b'{"name":"dan"}')
    assert service.answers.addr_body("d" * 40) is None
    assert inner.paths == []


def test_id_sql_cannot_decide_goes_to_the_stack() -> None:
    hot_path, inner, _ = make_hot_path(make_service())
    assert call(hot_path, "/addr/" + "d" * 40)[0] == 599  # pending, not served here
    assert call(hot_path, "/addr/" + "c" * 40)[0] == 599  # a key that proves nothing
    assert call(hot_path, "/addr/" + "e" * 40)[0] == 599  # nothing in SQL: the chain's
    assert call(hot_path, "/addr/" + "0" * 40)[0] == 599
    assert len(inner.paths) == 4
