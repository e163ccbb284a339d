"""The ASGI middlewares of app.main and app.logs, on a small Starlette app."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.logs import RequestIdMiddleware, request_id
from app.middlewares import PathPrefixMiddleware, TimeoutMiddleware


async def _echo(request: Request) -> JSONResponse:
    logging.getLogger("tests").info("inside")
    return JSONResponse(
        {
            "path": request.url.path,
            "raw": request.scope["raw_path"].decode(),
            "id": request_id.get(),
        }
    )


async def _slow(request: Request) -> JSONResponse:
    await asyncio.sleep(5)
    return JSONResponse({})


def _app() -> Starlette:
    return Starlette(routes=[Route("/name/{rest:path}", _echo), Route("/slow", _slow)])


def _get(app: object, path: str, **kwargs: object) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path, **kwargs)  # type: ignore[arg-type]

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("path", "expected_path"),
    [
        pytest.param("/jami/name/alice", "/name/alice", id="under-prefix"),
        pytest.param("/name/alice", "/name/alice", id="at-root"),
        pytest.param("/jami/name/a%2Fb", "/name/a/b", id="raw-path-kept-encoded"),
    ],
)
def test_prefix_serves_under_prefix_and_root(path: str, expected_path: str) -> None:
    answer = _get(PathPrefixMiddleware(_app(), "/jami"), path)
    assert answer.status_code == 200
    assert answer.json()["path"] == expected_path
    assert answer.json()["raw"] == path.removeprefix("/jami")


def test_prefix_does_not_match_longer_segment() -> None:
    assert _get(PathPrefixMiddleware(_app(), "/jami"), "/jamix/name/alice").status_code == 404


def test_timeout_answers_503_with_retry_after() -> None:
    answer = _get(TimeoutMiddleware(_app(), 0.2), "/slow")
    assert answer.status_code == 503
    assert answer.headers["retry-after"]
    assert answer.json() == {"error": "request timed out"}


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        pytest.param("abc-123", True, id="sane"),
        pytest.param("x" * 65, False, id="too-long"),
        pytest.param("a b", False, id="space"),
    ],
)
def test_request_id_is_echoed_when_sane(given: str, kept: bool) -> None:
    answer = _get(RequestIdMiddleware(_app()), "/name/x", headers={"X-Request-ID": given})
    assert (answer.headers["x-request-id"] == given) is kept
    assert answer.json()["id"] == answer.headers["x-request-id"]


def test_request_id_is_made_when_absent() -> None:
    first = _get(RequestIdMiddleware(_app()), "/name/x").headers["x-request-id"]
    second = _get(RequestIdMiddleware(_app()), "/name/x").headers["x-request-id"]
    assert first != second
    assert len(first) == 16


def test_timed_out_post_says_success_false() -> None:
    async def go() -> httpx.Response:
        app = TimeoutMiddleware(Starlette(routes=[Route("/slow", _slow, methods=["POST"])]), 0.2)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/slow", json={})

    answer = asyncio.run(go())
    assert answer.status_code == 503
    assert answer.json() == {"success": False, "error": "request timed out"}
