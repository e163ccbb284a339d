"""The FastAPI application: create_app(settings) and the lifespan that builds its state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from app.api.docs import serve_offline_docs
from app.api.hot_path import HotPath, HotPathApp
from app.api.ops import router as ops_router
from app.api.routes import router
from app.chain.anvil import AnvilNode, AnvilNotFound, AnvilStartError, find_anvil, fund
from app.chain.client import ChainClient, ChainIdMismatch, ChainRejected
from app.chain.registrar import Registrar, create_address, deployment_data
from app.chain.signer import Signer, SignerKeyError, load_or_create_key_file, load_signer
from app.db import get_meta, make_async_engine, make_sessionmaker, migrate, session_scope, set_meta
from app.errors import BadRequest, JaminsError, ServiceUnavailable, handle_jamins_error
from app.logs import RequestIdMiddleware, configure_logging
from app.metrics import Metrics, MetricsMiddleware, ops_lifespan
from app.middlewares import (
    HeadMiddleware,
    PathPrefixMiddleware,
    RequestBoundsMiddleware,
    StartupErrorMiddleware,
    TimeoutMiddleware,
)
from app.services.admission import Admission
from app.services.registry import NameService
from app.serving import ConnectionLimits, GuardedHttpProtocol
from app.settings import Settings
from app.workers.background import Background
from app.workers.chain_watch import ChainWatch
from app.workers.indexer import Indexer
from app.workers.leader import leader_lock
from app.workers.supervisor import Supervisor
from app.workers.writer import GasPolicy, TxWriter, deploy_registrar

logger = logging.getLogger(__name__)

EMBEDDED_FUNDING_WEI = 10**24  # a million ether of a private chain: gas for ever
META_REGISTRAR = "registrar_address"
META_CHAIN_ID = "chain_id"
META_REGISTRAR_BLOCK = "registrar_block"


class StartupError(RuntimeError):
    """The server cannot start as configured; the message tells the operator what to do."""


# Start-up failures whose message tells the operator what to fix: one log line each.
OPERATOR_ERRORS: tuple[type[Exception], ...] = (
    StartupError,
    ChainIdMismatch,
    SignerKeyError,
    AnvilNotFound,
    AnvilStartError,
    ServiceUnavailable,
)


@dataclass
class Runtime:
    """Everything the lifespan built, to be stopped in reverse order."""

    node: AnvilNode | None = None
    client: ChainClient | None = None
    background: Background | None = None
    chain_watch: ChainWatch | None = None
    supervisor: Supervisor = field(default_factory=Supervisor)


def start_embedded_node(settings: Settings) -> AnvilNode:
    """The embedded default's chain: anvil with the Jami chain's id, forks and gas limit."""
    chain_dir = settings.data_dir / "chain"
    chain_dir.mkdir(parents=True, exist_ok=True)
    node = AnvilNode(
        binary=find_anvil(settings.anvil_path),
        state_file=chain_dir / "state.json",
        chain_id=settings.chain_id,
        block_time=settings.embedded_block_time,
        state_interval=settings.embedded_state_interval,
        log_file=chain_dir / "anvil.log",
        # No funded dev accounts: any local process could spend them. The signer is
        # given its balance with anvil_setBalance (fund_embedded_signer).
        accounts=0,
    )
    node.start()
    logger.info("embedded chain node at %s (state in %s)", node.url, chain_dir)
    return node


async def fund_embedded_signer(client: ChainClient, signer: Signer) -> None:
    """The embedded chain is private: its signer is simply given what it needs."""
    balance = await client.call(client.w3.eth.get_balance(signer.address))
    if balance < EMBEDDED_FUNDING_WEI // 2:
        await asyncio.to_thread(fund, client.url, signer.address, EMBEDDED_FUNDING_WEI)


async def _remember(service_db: Any, values: dict[str, str]) -> None:
    """Store meta values; a worker starting at the same moment may insert them first."""
    for attempt in range(2):
        try:
            async with session_scope(service_db) as session, session.begin():
                for key, value in values.items():
                    await set_meta(session, key, value)
            return
        except sqlalchemy.exc.IntegrityError:
            if attempt:
                raise


async def _wait_for_remembered_registrar(service_db: Any, seconds: float = 30) -> str:
    async with asyncio.timeout(seconds):
        while True:
            async with session_scope(service_db) as session:
                remembered = await get_meta(session, META_REGISTRAR)
            if remembered is not None:
                return remembered
            await asyncio.sleep(0.5)


async def resolve_registrar(
    settings: Settings, client: ChainClient, signer: Signer | None, service_db: Any
) -> Registrar:
    """The configured, remembered, or newly deployed registrar."""
    address = settings.contract_address
    async with session_scope(service_db) as session:
        remembered = await get_meta(session, META_REGISTRAR)
        remembered_chain = await get_meta(session, META_CHAIN_ID)
    if address is None and remembered is not None:
        if remembered_chain is not None and int(remembered_chain) != settings.chain_id:
            raise StartupError(
                f"the database belongs to chain {remembered_chain}, not {settings.chain_id}"
            )
        address = remembered
    if address is None:
        if not (settings.embedded or settings.deploy):
            raise StartupError(
                "no registrar address: set JAMINS_CONTRACT_ADDRESS, run `jamins deploy`, "
                "or set JAMINS_DEPLOY=true to deploy one on first start"
            )
        if signer is None:
            raise StartupError("deploying the registrar needs a signer key")
        # The embedded key's first transaction deploys the registrar, so a lost database
        # finds it again at the key's first CREATE address instead of deploying anew.
        first = create_address(signer.address, 0)
        if settings.embedded and await Registrar(client, first).is_deployed():
            address = first
    if address is None:
        assert signer is not None
        try:
            address, block = await deploy_registrar(
                client,
                signer,
                GasPolicy(settings.chain_id, settings.gas_price_wei),
                deployment_data(),
            )
        except ChainRejected:
            # Another worker or server of this database deployed first (its transaction
            # took the nonce): use what it remembers.
            address = await _wait_for_remembered_registrar(service_db)
        else:
            logger.info("deployed the registrar at %s in block %d", address, block)
            await _remember(service_db, {META_REGISTRAR_BLOCK: str(block)})
    registrar = Registrar(client, address)
    if not await registrar.is_deployed():
        raise StartupError(f"no contract at {address} on the chain at {client.url}")
    await _remember(
        service_db, {META_REGISTRAR: address.lower(), META_CHAIN_ID: str(settings.chain_id)}
    )
    return registrar


def writer_factory(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    client: ChainClient,
    registrar: Registrar,
    signer: Signer | None,
    on_settled: Callable[[str], None] | None = None,
) -> Callable[[], TxWriter] | None:
    if signer is None:
        return None
    automining = settings.embedded and settings.embedded_block_time is None

    async def mine_block() -> None:
        await client.rpc("evm_mine", [])

    def make() -> TxWriter:
        return TxWriter(
            sessionmaker=sessionmaker,
            client=client,
            registrar=registrar,
            signer=signer,
            policy=GasPolicy(settings.chain_id, settings.gas_price_wei),
            poll_seconds=settings.receipt_poll_seconds,
            max_in_flight=settings.max_in_flight,
            confirmations=settings.effective_confirmations(),
            mine_stalled=mine_block if automining else None,
            on_settled=on_settled,
        )

    return make


async def _indexer_factory(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    client: ChainClient,
    registrar: Registrar,
    service: NameService,
) -> Callable[[], Indexer]:
    start_block = settings.index_from_block
    if start_block is None:
        async with session_scope(sessionmaker) as session:
            deployed_at = await get_meta(session, META_REGISTRAR_BLOCK)
        start_block = int(deployed_at) if deployed_at is not None else 0

    def make() -> Indexer:
        return Indexer(
            sessionmaker=sessionmaker,
            client=client,
            registrar=registrar,
            start_block=start_block,
            reorg_window=settings.reorg_window,
            poll_seconds=settings.index_poll_seconds,
            on_changed=service.records_changed,
        )

    return make


def admission_for(settings: Settings) -> Admission:
    """This process's share of the per-client registration limit.

    Each of `--workers N` processes keeps its own buckets, and a client's connections land
    on any of them: each gets 1/N of the rate and of the burst (at least 1), so one client
    never gets more than the configured rate in all (it may get less when its requests all
    reach one worker). The pending-queue bound counts SQL rows, shared by every worker.
    """
    workers = settings.workers
    return Admission(
        rate_per_minute=settings.register_rate_per_minute / workers,
        burst=max(1, settings.register_burst // workers),
        max_pending=settings.max_pending,
    )


@contextlib.asynccontextmanager
async def lifespan_of(app: FastAPI, settings: Settings) -> AsyncIterator[None]:
    runtime = Runtime()
    engine = make_async_engine(settings)
    try:
        await asyncio.to_thread(migrate, settings)
        sessionmaker = make_sessionmaker(engine)
        signer = load_signer(settings)
        rpc_url = settings.rpc_url
        if settings.embedded:
            # Started from the event loop's own thread on purpose: PR_SET_PDEATHSIG fires
            # when the starting thread ends, and a worker thread may end before we do.
            runtime.node = start_embedded_node(settings)
            rpc_url = runtime.node.url
            if signer is None:
                signer = load_or_create_key_file(settings.data_dir / "signer.key")
        assert rpc_url is not None
        client = ChainClient(rpc_url, timeout=settings.rpc_timeout)
        runtime.client = client
        await client.check_chain_id(settings.chain_id)
        if runtime.node is not None and signer is not None:
            await fund_embedded_signer(client, signer)
        registrar = await resolve_registrar(settings, client, signer, sessionmaker)
        service = NameService(
            sessionmaker=sessionmaker,
            registrar=registrar,
            negative_cache_seconds=settings.negative_cache_seconds,
            registrations_enabled=signer is not None,
            admission=admission_for(settings),
            lookup_cache_seconds=settings.lookup_cache_seconds,
            owner_address=signer.address if signer is not None else None,
            serve_pending=settings.only_writer(),
        )
        background = Background(
            lock=leader_lock(engine, settings.sqlite_path()),
            make_writer=writer_factory(
                settings,
                sessionmaker,
                client,
                registrar,
                signer,
                on_settled=lambda folded: service.records_changed([folded]),
            ),
            make_indexer=await _indexer_factory(settings, sessionmaker, client, registrar, service),
            poll_seconds=settings.leader_poll_seconds,
        )
        service.on_accepted.append(background.wake)
        runtime.background = background
        runtime.supervisor.start("leader", background.run)
        runtime.chain_watch = ChainWatch(
            client=client,
            registrar_address=registrar.address,
            interval=settings.chain_watch_seconds,
            on_change=lambda problem: setattr(service, "chain_problem", problem),
        )
        runtime.supervisor.start("chain-watch", runtime.chain_watch.run)
        runtime.supervisor.adopt(background.work)
        if signer is None:
            logger.warning("no signer key: lookups only, registrations answer 503")
        app.state.service = service
        app.state.signer_address = signer.address if signer is not None else None
        app.state.runtime = runtime
        logger.info(
            "serving registrar %s on chain %d (%s)",
            registrar.address.lower(),
            settings.chain_id,
            "embedded node" if settings.embedded else rpc_url,
        )
        yield
    finally:
        await runtime.supervisor.stop()
        if runtime.client is not None:
            await runtime.client.close()
        await engine.dispose()
        if runtime.node is not None:
            await asyncio.to_thread(runtime.node.stop)


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


async def _handle_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    body: dict[str, Any] = {"error": str(exc.detail).lower()}
    if request.method == "POST":
        body = {"success": False, **body}
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    # Unknown routes stay 404/405; they are not name lookups.
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    # FastAPI's 422 would read as "not found" (lookup) or "taken" (registration).
    return await handle_jamins_error(request, BadRequest("invalid request"))


def _openapi_without_422(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI documents a 422 on every route with parameters; ours answer 400 instead."""

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


def configure_connections(settings: Settings) -> None:
    """The connection bounds of this process's server protocol (app.serving)."""
    GuardedHttpProtocol.configure(
        ConnectionLimits(
            header_timeout=settings.header_timeout, max_connections=settings.max_connections
        )
    )


def create_app_from_env() -> FastAPI:
    """The app of one worker process of `jamins serve --workers N`."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    configure_connections(settings)
    return create_app(settings)


def create_app(settings: Settings) -> FastAPI:
    """The ASGI application for these settings; state is built when its lifespan starts."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = False
        try:
            async with lifespan_of(app, settings), ops_lifespan(app, settings):
                started = True
                yield
        except OPERATOR_ERRORS as exc:
            if not started:
                app.state.startup_error = f"cannot start: {exc}"
            raise

    app = HotPathApp(
        title="jamins",
        summary="A name server for Jami, backed by a registrar contract",
        version="0.1.0",
        lifespan=lifespan,
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.openapi = _openapi_without_422(app)  # type: ignore[method-assign]
    app.include_router(router)
    app.include_router(ops_router)
    serve_offline_docs(app)
    app.state.metrics = Metrics(app)
    app.add_exception_handler(JaminsError, handle_jamins_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_middleware(TimeoutMiddleware, seconds=settings.request_timeout)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(HeadMiddleware)
    if settings.path_prefix:
        app.add_middleware(PathPrefixMiddleware, prefix=settings.path_prefix)
    # Outermost: nothing is kept for a request this refuses.
    app.add_middleware(RequestBoundsMiddleware)
    app.add_middleware(
        StartupErrorMiddleware, describe=lambda: getattr(app.state, "startup_error", None)
    )
    # Outside all of the above: cache hits answered before any of it runs.
    app.hot_path = HotPath(
        app.stack,
        service=lambda: getattr(app.state, "service", None),
        # Another process may accept a registration at any moment: then a "free" answer
        # must look at SQL first, which the routes do.
        serve_negative=settings.workers == 1 and settings.sqlite_path() is not None,
        prefix=settings.path_prefix or "",
        metrics=app.state.metrics,
    )
    return app
