"""The API's documentation: the OpenAPI schema, and /docs and /redoc served with no CDN.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so they are blank on a host
without internet. The assets come instead from the pinned `fastapi-offline` package, which
ships Swagger UI 5 and ReDoc as package data (only those files are used). Every URL in the
pages is relative, so `/docs` and `PREFIX/docs` (JAMINS_PATH_PREFIX, or a proxy's prefix)
each fetch the schema and assets under their own prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS_PATH = "/docs-assets"
_ASSETS_PACKAGE = "fastapi_offline"


def assets_dir() -> Path:
    """The folder holding swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js."""
    return Path(str(files(_ASSETS_PACKAGE) / "static"))


def serve_offline_docs(app: FastAPI) -> None:
    """Replace FastAPI's CDN-based documentation pages with self-contained ones."""
    cdn_pages = {app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    app.router.routes[:] = [
        route for route in app.router.routes if getattr(route, "path", None) not in cdn_pages
    ]
    app.mount(ASSETS_PATH, StaticFiles(directory=assets_dir()), name="docs-assets")
    # Relative to the page: /docs -> /openapi.json, /jami/docs -> /jami/openapi.json.
    schema = (app.openapi_url or "/openapi.json").lstrip("/")
    assets = ASSETS_PATH.lstrip("/")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=schema,
            title=f"{app.title} - API",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=schema,
            title=f"{app.title} - API",
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon.png",
            with_google_fonts=False,
        )


def openapi_without_422(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI documents a 422 on every route with parameters; ours answer 400 instead
    (app.api.errors)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = schema.get("components", {}).get("schemas", {})
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi
