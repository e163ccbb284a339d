"""The hot path (app/api/hot_path.py), in process: what it answers itself and how."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from app.api.hot_path import ADDR_ROUTE, FLUSH_EVERY, NAME_ROUTE, NOT_FOUND_BODY, HotPath
from app.db import NameRow
from app.errors import (
    AddressHasName,
    InvalidName,
    JaminsError,
    NameTaken,
    ProofRejected,
    RegistrationsThrottled,
    error_response,
)
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
    body: list[bytes] | None = None,
) -> tuple[int, dict[bytes, bytes], bytes, list[str]]:
    """(status, headers, body, request id current at each send) of one request; `body`
    is the request body's chunks (the client leaves after the last one, if asked again)."""
    sent: list[dict[str, Any]] = []
    ids: list[str] = []
    chunks = list(body or [b""])

    async def receive() -> dict[str, Any]:
        if not chunks:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

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
        "client": ("192.0.2.7", 40000),
    }
    asyncio.run(hot_path(scope, receive, send))  # type: ignore[arg-type]
    if not sent:
        return 0, {}, b"", ids
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"], ids


def make_hot_path(
    service: NameService | None,
    *,
    serve_negative: bool = True,
    prefix: str = "",
    request_timeout: float = 30.0,
) -> tuple[HotPath, Inner, Metrics]:
    inner = Inner()
    metrics = Metrics(lambda: None)
    hot_path = HotPath(
        inner,
        service=lambda: service,
        serve_negative=serve_negative,
        prefix=prefix,
        metrics=metrics,
        request_timeout=request_timeout,
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
    assert call(hot_path, "/name/alice", query=b"x" * 20_000)[0] == 599  # the stack's 400
    assert call(hot_path, "/registrations/alice", method="POST")[0] == 599
    assert call(hot_path, "/name/alice", method="PUT")[0] == 599
    assert call(hot_path, "/name/alice", method="POST", query=b"x" * 20_000)[0] == 599
    assert len(inner.paths) == 7


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


def test_id_whose_row_is_its_own_forward_record_is_answered_from_one_read() -> None:
    """The row pointing at the ID is the very row its name's lookup reads (one row per
    fold): /addr asks SQL once, as /name does, not a second time for the same row."""
    service = make_service(serve_pending=True)
    hot_path, _, _ = make_hot_path(service)
    assert call(hot_path, "/addr/" + "d" * 40)[:3:2] == (200, b'{"name":"dan"}')
    assert service.reader.reads == []  # type: ignore[attr-defined]


def test_id_whose_row_folds_elsewhere_is_checked_against_the_forward_record() -> None:
    """A row stored under another fold (an older fold rule) is no answer by itself: the
    lookup of its name must give the ID back."""
    service = make_service(serve_pending=True)
    reader: FakeReader = service.reader  # type: ignore[assignment]
    reader.rows["dan-old"] = reader.rows.pop("dan")._replace(folded_name="dan-old")
    hot_path, inner, _ = make_hot_path(service)
    assert call(hot_path, "/addr/" + "d" * 40)[0] == 599  # no row under "dan": the stack's
    assert reader.reads == ["dan"]
    assert inner.paths == ["/addr/" + "d" * 40]


def test_id_sql_cannot_decide_goes_to_the_stack() -> None:
    hot_path, inner, _ = make_hot_path(make_service())
    assert call(hot_path, "/addr/" + "d" * 40)[0] == 599  # pending, not served here
    assert call(hot_path, "/addr/" + "c" * 40)[0] == 599  # a key that proves nothing
    assert call(hot_path, "/addr/" + "e" * 40)[0] == 599  # nothing in SQL: the chain's
    assert call(hot_path, "/addr/" + "0" * 40)[0] == 599
    assert len(inner.paths) == 4


# -- registrations: POST /name/NAME ----------------------------------------------------------

REGISTRATION = {"addr": "0x" + "ab" * 20, "publickey": "cGs=", "signature": "c2ln"}


class Registrations:
    """Stands in for NameService.register: records each call and the request id current
    during it, or raises `refuse`, or takes `delay` seconds."""

    def __init__(self, service: NameService) -> None:
        self.calls: list[tuple[str, dict[str, Any], str | None, str]] = []
        self.refuse: BaseException | None = None
        self.delay = 0.0
        service.register = self  # type: ignore[method-assign]

    async def __call__(self, name: str, request: Any, *, client: str | None = None) -> None:
        self.calls.append((name, request.model_dump(exclude_none=True), client, request_id.get()))
        await asyncio.sleep(self.delay)
        if self.refuse is not None:
            raise self.refuse


def post(hot_path: HotPath, path: str, body: bytes | list[bytes], **options: Any) -> Any:
    chunks = body if isinstance(body, list) else [body]
    return call(hot_path, path, method="POST", body=chunks, **options)


def stack_answer(exc: JaminsError) -> tuple[int, bytes, dict[bytes, bytes]]:
    """What the stack's error handler renders for `exc` on a registration."""
    response = error_response(exc, "POST")
    return response.status_code, bytes(response.body), dict(response.raw_headers)


def test_registration_is_answered_by_the_hot_path() -> None:
    """The route's work, without FastAPI's routing, dependencies and the middleware stack
    (most of a registration's time on the loop before): same answer, id, count, log."""
    service = make_service()
    registrations = Registrations(service)
    hot_path, inner, metrics = make_hot_path(service)
    status, headers, body, ids = post(hot_path, "/name/Alice", json.dumps(REGISTRATION).encode())
    assert (status, body) == (200, b'{"success":true}')
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == b"16"
    assert registrations.calls == [("Alice", REGISTRATION, "192.0.2.7", ids[0])]
    assert ids[0] == headers[b"x-request-id"].decode()
    assert inner.paths == []
    assert count(hot_path, metrics, NAME_ROUTE, "POST", "200") == 1


def test_registration_body_in_chunks_and_percent_encoded_name() -> None:
    service = make_service()
    registrations = Registrations(service)
    hot_path, _, _ = make_hot_path(service, prefix="/ns")
    raw = json.dumps(REGISTRATION).encode()
    status, _, _, _ = post(hot_path, "/ns/name/%C3%A9lodie", [raw[:10], raw[10:50], raw[50:]])
    assert status == 200
    assert registrations.calls[0][:2] == ("\u00e9lodie", REGISTRATION)


@pytest.mark.parametrize(
    ("refusal", "status"),
    [
        pytest.param(NameTaken(), 409, id="taken"),
        pytest.param(AddressHasName(name="bob", addr="ab" * 20), 403, id="id-has-a-name"),
        pytest.param(ProofRejected("signature does not match"), 401, id="proof"),
        pytest.param(RegistrationsThrottled("slow down", retry_after=7), 503, id="throttled"),
        pytest.param(InvalidName(), 400, id="invalid-name"),
    ],
)
def test_refused_registration_is_answered_as_the_stack_renders_it(
    refusal: JaminsError, status: int
) -> None:
    service = make_service()
    Registrations(service).refuse = refusal
    hot_path, _, metrics = make_hot_path(service)
    got, headers, body, _ = post(hot_path, "/name/alice", json.dumps(REGISTRATION).encode())
    expected_status, expected_body, expected_headers = stack_answer(refusal)
    assert (got, body) == (expected_status, expected_body) == (status, expected_body)
    assert json.loads(body)["success"] is False
    for name, value in expected_headers.items():  # Retry-After too
        assert headers[name] == value
    assert count(hot_path, metrics, NAME_ROUTE, "POST", str(status)) == 1


@pytest.mark.parametrize(
    ("body", "headers", "error"),
    [
        pytest.param([b"not json"], [], "body is not valid JSON", id="not-json"),
        pytest.param([b""], [], "body is not valid JSON", id="empty"),
        pytest.param([b'{"addr": 12}'], [], None, id="addr-number"),
        pytest.param(
            [b"{}"], [(b"content-length", b"20000")], "request body too large", id="declared"
        ),
        pytest.param(
            [b"{}"], [(b"content-length", b"-1")], "request body too large", id="declared-bad"
        ),
        pytest.param([b"x" * 10_000] * 2, [], "request body too large", id="sent"),
    ],
)
def test_malformed_registration_is_400_and_never_registered(
    body: list[bytes], headers: list[tuple[bytes, bytes]], error: str | None
) -> None:
    service = make_service()
    registrations = Registrations(service)
    hot_path, _, _ = make_hot_path(service)
    status, _, answer, _ = post(hot_path, "/name/alice", body, headers=headers)
    assert status == 400
    assert json.loads(answer)["success"] is False
    if error is not None:
        assert json.loads(answer)["error"] == error
    assert registrations.calls == []


def test_undecodable_name_is_400_before_the_body_is_read() -> None:
    service = make_service()
    registrations = Registrations(service)
    hot_path, _, _ = make_hot_path(service)
    status, _, body, _ = post(hot_path, "/name/%FFabc", b"not even json")
    assert (status, body) == stack_answer(InvalidName())[:2]
    assert registrations.calls == []


def test_registration_past_the_request_timeout_is_503() -> None:
    service = make_service()
    registrations = Registrations(service)
    registrations.delay = 5.0
    hot_path, _, metrics = make_hot_path(service, request_timeout=0.05)
    status, headers, body, _ = post(hot_path, "/name/alice", json.dumps(REGISTRATION).encode())
    assert (status, json.loads(body)) == (
        503,
        {"success": False, "error": "request timed out"},
    )
    assert headers[b"retry-after"]
    assert count(hot_path, metrics, NAME_ROUTE, "POST", "503") == 1


def test_client_gone_before_its_body_ends_registers_nothing() -> None:
    service = make_service()
    registrations = Registrations(service)
    hot_path, _, _ = make_hot_path(service)

    async def run() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        messages = [{"type": "http.request", "body": b'{"addr"', "more_body": True}]

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/name/a", "raw_path": b"/name/a"}
        await hot_path(scope, receive, send)  # type: ignore[arg-type]
        return sent

    assert asyncio.run(run()) == []
    assert registrations.calls == []


def test_unexpected_failure_is_a_500_and_raised() -> None:
    """As Starlette's ServerErrorMiddleware does: a plain 500 to the client, the exception
    to uvicorn, which logs its traceback."""
    service = make_service()
    Registrations(service).refuse = RuntimeError("a bug")
    hot_path, _, metrics = make_hot_path(service)
    with pytest.raises(RuntimeError, match="a bug"):
        post(hot_path, "/name/alice", json.dumps(REGISTRATION).encode())
    assert count(hot_path, metrics, NAME_ROUTE, "POST", "500") == 1
