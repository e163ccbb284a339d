"""The runtime: everything a running jamins holds, opened and closed in one place.

`open_runtime(settings)` opens the database engine, the chain node (the embedded one when
no JAMINS_RPC_URL is set), the chain client, the signer, the registrar and the name
service, and closes them in reverse order. The app's lifespan opens it and starts the
background workers under its supervisor (`Runtime.start_workers`); the CLI's chain
commands (`jamins index`, `jamins import`) open it with `command=True`.

A runtime either provisions (app.provision: migrate, find or deploy the registrar, record
it) or only reads what provisioning recorded: the workers of `jamins serve` on a configured
node read (the parent provisioned before starting them); the process that owns the embedded
node, a CLI command, and an app built by `create_app(settings)` alone provision, each in
its single process.

`ServerState` is what the FastAPI app keeps (`server_state(app)`): the settings, the
metrics, and the runtime while the lifespan runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.applications import Starlette

from app.chain.anvil import AnvilNode
from app.chain.client import ChainClient
from app.chain.registrar import Registrar
from app.chain.signer import Signer, load_or_create_key_file, load_signer
from app.db import LookupReader, make_async_engine, make_sessionmaker
from app.metrics import Metrics
from app.provision import (
    OPERATOR_ERRORS,
    ProvisionError,
    fund_embedded_signer,
    indexer_start_block,
    provision_database,
    recorded_registrar,
    start_embedded_node,
)
from app.services.admission import Admission
from app.services.balance import BalanceReading, BalanceWatch
from app.services.registry import NameService
from app.settings import Settings
from app.workers.background import Background
from app.workers.chain_watch import ChainWatch
from app.workers.indexer import Indexer, IndexerProgress
from app.workers.leader import DataDirInUse, DataDirLock, LeaderLock, leader_lock
from app.workers.supervisor import Supervisor
from app.workers.writer import GasPolicy, TxWriter, current_gas_price

logger = logging.getLogger(__name__)


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


@dataclass
class Runtime:
    """The open runtime (see the module docstring); built by open_runtime only."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    client: ChainClient
    registrar: Registrar
    signer: Signer | None
    service: NameService
    leader_lock: LeaderLock
    # The embedded node, when this process runs it.
    node: AnvilNode | None = None
    # A command's hold on the leader lock (always False for a server: its leader loop
    # takes the lock in the background).
    is_leader: bool = False
    supervisor: Supervisor = field(default_factory=Supervisor)
    # The server's background work, once start_workers ran.
    background: Background | None = None
    chain_watch: ChainWatch | None = None
    balance_watch: BalanceWatch | None = None

    @property
    def gas_policy(self) -> GasPolicy:
        return GasPolicy(self.settings.chain_id, self.settings.gas_price_wei)

    def make_writer(self, on_settled: Callable[[str], None] | None = None) -> TxWriter | None:
        """A transaction writer, or None without a signer (lookups only)."""
        if self.signer is None:
            return None
        mine_stalled = None
        if self.node is not None and self.settings.embedded_block_time is None:

            async def mine_block() -> None:
                await self.client.rpc("evm_mine", [])

            mine_stalled = mine_block
        return TxWriter(
            sessionmaker=self.sessionmaker,
            client=self.client,
            registrar=self.registrar,
            signer=self.signer,
            policy=self.gas_policy,
            poll_seconds=self.settings.receipt_poll_seconds,
            max_in_flight=self.settings.max_in_flight,
            confirmations=self.settings.effective_confirmations(),
            mine_stalled=mine_stalled,
            on_settled=on_settled,
        )

    def make_indexer(
        self, start_block: int, on_progress: Callable[[IndexerProgress], None] | None = None
    ) -> Indexer:
        """An indexer from `start_block` (app.provision.indexer_start_block)."""
        return Indexer(
            sessionmaker=self.sessionmaker,
            client=self.client,
            registrar=self.registrar,
            start_block=start_block,
            reorg_window=self.settings.reorg_window,
            poll_seconds=self.settings.index_poll_seconds,
            on_progress=on_progress,
            on_changed=self.service.records_changed,
        )

    async def start_workers(
        self, on_balance: Callable[[BalanceReading | None], None] | None = None
    ) -> None:
        """Start the server's background work under the supervisor: the leader loop (the
        writer and the indexer while leader), the chain watch and the balance watch."""
        settings, service = self.settings, self.service
        start_block = await indexer_start_block(settings, self.sessionmaker)

        def on_settled(folded_name: str) -> None:
            service.records_changed([folded_name])

        def make_writer() -> TxWriter:
            writer = self.make_writer(on_settled)
            assert writer is not None  # only made with a signer
            return writer

        def on_chain_change(problem: str | None) -> None:
            service.chain_problem = problem

        # The leader loop makes a fresh writer and indexer at each (re)start: each reads
        # its state back from SQL and the chain.
        background = Background(
            lock=self.leader_lock,
            make_writer=make_writer if self.signer is not None else None,
            make_indexer=lambda: self.make_indexer(start_block),
            poll_seconds=settings.leader_poll_seconds,
        )
        service.on_accepted.append(background.wake)
        self.background = background
        self.supervisor.start("leader", background.run)
        self.supervisor.adopt(background.work)
        self.chain_watch = ChainWatch(
            client=self.client,
            registrar_address=self.registrar.address,
            interval=settings.chain_watch_seconds,
            on_change=on_chain_change,
        )
        self.supervisor.start("chain-watch", self.chain_watch.run)
        if self.signer is not None:
            policy = self.gas_policy
            self.balance_watch = BalanceWatch(
                service=service,
                client=self.client,
                signer_address=self.signer.address,
                gas_price=lambda: current_gas_price(self.client, policy),
                interval=settings.balance_check_seconds,
                warn_below=settings.low_balance_registrations,
                on_check=on_balance,
            )
            self.supervisor.start("balance-watch", self.balance_watch.run)


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings, *, provision: bool, command: bool = False
) -> AsyncIterator[Runtime]:
    """Open the runtime; with `provision`, provision first (app.provision), else read what
    provisioning recorded. A `command` takes the leader lock when it is free, and runs the
    embedded node only while holding it and the data directory's lock."""
    engine = make_async_engine(settings)
    reader = LookupReader(engine, own_pool=True, connect_timeout=settings.db_connect_timeout)
    lock = leader_lock(engine, settings.sqlite_path())
    is_leader = False
    node: AnvilNode | None = None
    node_lock: DataDirLock | None = None
    client: ChainClient | None = None
    supervisor = Supervisor()
    try:
        signer = load_signer(settings)
        if command:
            is_leader = await lock.try_acquire()
        rpc_url = settings.rpc_url
        if settings.embedded:
            if command:
                node_lock = _lock_data_dir(settings, is_leader)
            # Started from the event loop's own thread on purpose: PR_SET_PDEATHSIG fires
            # when the starting thread ends, and a worker thread may end before we do.
            node = start_embedded_node(settings)
            rpc_url = node.url
            if signer is None:
                signer = load_or_create_key_file(settings.data_dir / "signer.key")
        assert rpc_url is not None
        timeout = max(settings.rpc_timeout, 30) if command else settings.rpc_timeout
        client = ChainClient(rpc_url, timeout=timeout)
        sessionmaker = make_sessionmaker(engine)
        if provision:
            if node is not None and signer is not None:
                await fund_embedded_signer(client, signer)
            registrar = await provision_database(settings, engine, client, signer)
        else:
            registrar = await recorded_registrar(settings, client, sessionmaker)
        service = NameService(
            sessionmaker=sessionmaker,
            registrar=registrar,
            negative_cache_seconds=settings.negative_cache_seconds,
            registrations_enabled=signer is not None,
            admission=admission_for(settings),
            lookup_cache_seconds=settings.lookup_cache_seconds,
            owner_address=signer.address if signer is not None else None,
            serve_pending=settings.only_writer(),
            reader=reader,
        )
        yield Runtime(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            client=client,
            registrar=registrar,
            signer=signer,
            service=service,
            leader_lock=lock,
            node=node,
            is_leader=is_leader,
            supervisor=supervisor,
        )
    finally:
        await supervisor.stop()
        if client is not None:
            await client.close()
        await reader.dispose()
        await engine.dispose()
        # The node stops before the locks that keep a second one off its state go.
        if node is not None:
            await asyncio.to_thread(node.stop)
        if node_lock is not None:
            node_lock.release()
        await lock.release()


def _lock_data_dir(settings: Settings, is_leader: bool) -> DataDirLock:
    """A command's hold on the embedded node's data directory (a running server owns it)."""
    if not is_leader:
        raise ProvisionError(
            "`jamins serve` is running on this data directory and owns its chain "
            "node: stop it first, or point JAMINS_RPC_URL at a node"
        )
    node_lock = DataDirLock(settings.data_dir)
    try:
        node_lock.acquire()
    except DataDirInUse as exc:
        raise ProvisionError(str(exc)) from None
    return node_lock


class ServerState:
    """What the app keeps: its settings and metrics, and the runtime while it serves."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics(live=lambda: self.runtime)
        self.runtime: Runtime | None = None
        # Why the lifespan could not start, in one line for the operator (else None).
        self.startup_error: str | None = None

    def started(self) -> Runtime:
        """The runtime. Servers answer requests only once the lifespan opened it: an app
        used without its lifespan (an ASGI test client without one) is a mistake."""
        if self.runtime is None:
            raise RuntimeError("the app's lifespan has not run: its runtime is not open")
        return self.runtime

    def service_or_none(self) -> NameService | None:
        return self.runtime.service if self.runtime is not None else None

    def describe_startup_error(self) -> str | None:
        return self.startup_error


def server_state(app: Starlette) -> ServerState:
    """The app's ServerState (set by app.main.create_app)."""
    state = app.state.server
    assert isinstance(state, ServerState)
    return state


def settle_heap() -> None:
    """Move every object alive once the server started (its modules, the runtime) out of
    the garbage collector's reach (gc.freeze).

    A full collection visits every tracked object; after start-up that is several hundred
    thousand objects of web3, SQLAlchemy, FastAPI and pydantic that live as long as the
    process. While the answer cache grows, full collections come one after another, and
    each held the event loop: p99 140 ms for first lookups of a 100k-name registry
    (bench/lookups.py `hit`), 13 ms with the start-up objects frozen. Garbage made before
    this point is collected first, so none of it is kept for ever."""
    gc.collect()
    gc.freeze()


def lifespan_for(
    state: ServerState, *, provisioned: bool
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """The app's lifespan: open the runtime (provisioning first unless `provisioned`) and
    run the workers while the app serves."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings = state.settings
        started = False
        try:
            # The node's owner provisions: the embedded node runs in this process only.
            provision = not provisioned or settings.embedded
            async with open_runtime(settings, provision=provision) as runtime:
                await runtime.start_workers(on_balance=state.metrics.record_balance)
                if runtime.signer is None:
                    logger.warning("no signer key: lookups only, registrations answer 503")
                state.runtime = runtime
                started = True
                logger.info(
                    "serving registrar %s on chain %d (%s)",
                    runtime.registrar.address.lower(),
                    settings.chain_id,
                    "embedded node" if runtime.node is not None else runtime.client.url,
                )
                settle_heap()
                yield
        except OPERATOR_ERRORS as exc:
            if not started:
                state.startup_error = f"cannot start: {exc}"
            raise

    return lifespan
