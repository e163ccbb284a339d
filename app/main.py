"""The FastAPI application: create_app(settings), and the factory of `--workers N`.

Everything the app runs on is built by its lifespan (app.runtime); this module only
assembles routes, middlewares and error handlers. Only uvicorn (the factory string) and
the tests import it.
"""

from __future__ import annotations

from fastapi import FastAPI

from app.api.docs import openapi_without_422, serve_offline_docs
from app.api.errors import install_error_handlers
from app.api.hot_path import HotPath, HotPathApp
from app.api.ops import router as ops_router
from app.api.routes import router
from app.logs import ACCESS_LOG, RequestIdMiddleware, configure_logging
from app.metrics import MetricsMiddleware
from app.middlewares import (
    HeadMiddleware,
    PathPrefixMiddleware,
    RequestBoundsMiddleware,
    StartupErrorMiddleware,
    TimeoutMiddleware,
)
from app.runtime import ServerState, lifespan_for
from app.serving import ConnectionLimits, GuardedHttpProtocol
from app.settings import Settings


def configure_connections(settings: Settings) -> None:
    """The connection bounds of this process's server protocol (app.serving)."""
    GuardedHttpProtocol.configure(
        ConnectionLimits(
            header_timeout=settings.header_timeout, max_connections=settings.max_connections
        )
    )


def create_app_from_env() -> FastAPI:
    """The app of one worker process of `jamins serve --workers N` (which provisioned
    before starting the workers: app.provision)."""
    settings = Settings.from_environment()
    configure_logging(settings.log_level, settings.log_format, access_log=settings.access_log)
    configure_connections(settings)
    return create_app(settings, provisioned=True)


def create_app(settings: Settings, *, provisioned: bool = False) -> HotPathApp:
    """The ASGI application for these settings; its runtime is opened by its lifespan.

    `provisioned`: a provisioning step already ran for these settings (`jamins serve`),
    so the lifespan only reads what it recorded; else the lifespan provisions itself."""
    state = ServerState(settings)
    app = HotPathApp(
        title="jamins",
        summary="A name server for Jami, backed by a registrar contract",
        version="0.1.0",
        lifespan=lifespan_for(state, provisioned=provisioned),
        redirect_slashes=False,
    )
    app.state.server = state
    app.openapi = openapi_without_422(app)  # type: ignore[method-assign]
    app.include_router(router)
    app.include_router(ops_router)
    serve_offline_docs(app)
    install_error_handlers(app)
    app.add_middleware(TimeoutMiddleware, seconds=settings.request_timeout)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(HeadMiddleware)
    if settings.path_prefix:
        app.add_middleware(PathPrefixMiddleware, prefix=settings.path_prefix)
    # Outermost: nothing is kept for a request this refuses.
    app.add_middleware(RequestBoundsMiddleware)
    app.add_middleware(StartupErrorMiddleware, describe=state.describe_startup_error)
    # Outside all of the above: cache hits answered before any of it runs.
    app.hot_path = HotPath(
        app.stack,
        service=state.service_or_none,
        # Another process may accept a registration at any moment: then a "free" answer
        # must look at SQL first, which the routes do.
        serve_negative=settings.workers == 1 and settings.sqlite_path() is not None,
        prefix=settings.path_prefix or "",
        metrics=state.metrics,
        request_timeout=settings.request_timeout,
        # Written only once configure_logging turned it on (`jamins serve`, access log on,
        # log level info or lower).
        access_log=ACCESS_LOG if settings.access_log else None,
    )
    return app
