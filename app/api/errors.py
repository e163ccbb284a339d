"""The app's exception handlers: one body shape for every error the API answers.

JaminsError (app.errors) renders itself; Starlette's HTTP errors (unknown route, wrong
method) keep their status with our body shape; FastAPI's validation error becomes a 400,
because its 422 would read as "not found" (lookup) or "taken" (registration).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from app.errors import BadRequest, JaminsError, handle_jamins_error


def _leaf_routes(routes: Iterable[Any]) -> Iterator[Any]:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's include_router
        if included is not None:
            yield from _leaf_routes(included.routes)
        else:
            yield route


def _allowed_methods(request: Request) -> str:
    """Every method some route takes at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    path = request.scope["path"]
    for route in _leaf_routes(request.app.router.routes):
        pattern = getattr(route, "path_regex", None)
        if pattern is not None and pattern.match(path):
            methods |= set(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")  # HeadMiddleware answers it
    return ", ".join(sorted(methods))


async def handle_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    body: dict[str, Any] = {"error": str(exc.detail).lower()}
    if request.method == "POST":
        body = {"success": False, **body}
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    # Unknown routes stay 404/405; they are not name lookups.
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


async def handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    return await handle_jamins_error(request, BadRequest("invalid request"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(JaminsError, handle_jamins_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
