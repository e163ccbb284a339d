"""Provisioning: the start-up steps that run once, before anything serves.

Migrate the schema, find or deploy the registrar, and record it (with the chain id and the
deployment block) in the meta table. `jamins serve` runs this once in its parent process,
before uvicorn starts its workers; `jamins migrate` and `jamins deploy` are its first step
and its deployment; the workers then only read what it recorded (`recorded_registrar`).

On the embedded default the chain node belongs to the one serving process (the serve parent
holds the data directory's lock, and `--workers` must be 1), so that process provisions
once it has started the node (app.runtime); so does an app built by `create_app(settings)`
without a prior provisioning step (the tests), each in its single process.

Provisioners of one database take turns on a provisioning lock (a PostgreSQL advisory lock,
or a file beside the SQLite file): a second server starting at the same moment finds the
registrar the first recorded instead of deploying its own. Nothing here retries: a refused
deployment (an unfunded signer) is one line for the operator at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import sqlalchemy.engine
import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.chain.anvil import AnvilNode, AnvilNotFound, AnvilStartError, find_anvil, fund
from app.chain.client import ChainClient, ChainIdMismatch, ChainRejected
from app.chain.registrar import Registrar, create_address, deployment_data
from app.chain.signer import Signer, SignerKeyError, load_signer
from app.db import get_meta, make_async_engine, make_sessionmaker, migrate, session_scope, set_meta
from app.errors import ServiceUnavailable
from app.settings import Settings
from app.workers.writer import GasPolicy, deploy_registrar

logger = logging.getLogger(__name__)

EMBEDDED_FUNDING_WEI = 10**24  # a million ether of a private chain: gas for ever
META_REGISTRAR = "registrar_address"
META_CHAIN_ID = "chain_id"
META_REGISTRAR_BLOCK = "registrar_block"
# pg_advisory_lock key of provisioning; neither the leader's nor the migrations' key.
_PROVISION_LOCK = 0x6A70726F76  # "jprov"


class ProvisionError(RuntimeError):
    """The server cannot start as configured; the message tells the operator what to do."""


# Start-up failures whose message tells the operator what to fix: one line each.
OPERATOR_ERRORS: tuple[type[Exception], ...] = (
    ProvisionError,
    ChainIdMismatch,
    SignerKeyError,
    AnvilNotFound,
    AnvilStartError,
    ServiceUnavailable,
)


@dataclass(frozen=True)
class Recorded:
    """What provisioning wrote in the meta table (None: not written yet)."""

    registrar_address: str | None
    chain_id: int | None
    registrar_block: int | None


def start_embedded_node(settings: Settings) -> AnvilNode:
    """The embedded default's chain: anvil with the Jami chain's id, forks and gas limit.

    Call it from the thread that keeps running while the node should (the event loop's):
    the node gets SIGTERM when that thread ends (PR_SET_PDEATHSIG, app.chain.anvil)."""
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


@contextlib.asynccontextmanager
async def provisioning_lock(settings: Settings, engine: AsyncEngine) -> AsyncIterator[None]:
    """Held while provisioning: one provisioner of a database at a time."""
    if engine.dialect.name == "postgresql":
        async with engine.connect() as connection:
            await connection.execute(
                text("SELECT pg_advisory_lock(:key)"), {"key": _PROVISION_LOCK}
            )
            await connection.commit()
            try:
                yield
            finally:
                await connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": _PROVISION_LOCK}
                )
                await connection.commit()
        return
    sqlite = settings.sqlite_path()
    if sqlite is None:  # an in-memory database belongs to one process anyway
        yield
        return
    sqlite.parent.mkdir(parents=True, exist_ok=True)
    with open(sqlite.with_name(sqlite.name + ".provision"), "a") as handle:
        await asyncio.to_thread(fcntl.flock, handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


async def read_recorded(sessionmaker: async_sessionmaker[AsyncSession]) -> Recorded:
    """What provisioning recorded in this database."""
    async with session_scope(sessionmaker) as session:
        address = await get_meta(session, META_REGISTRAR)
        chain_id = await get_meta(session, META_CHAIN_ID)
        block = await get_meta(session, META_REGISTRAR_BLOCK)
    return Recorded(
        registrar_address=address,
        chain_id=int(chain_id) if chain_id is not None else None,
        registrar_block=int(block) if block is not None else None,
    )


def _check_chain(settings: Settings, recorded: Recorded) -> None:
    if recorded.chain_id is not None and recorded.chain_id != settings.chain_id:
        raise ProvisionError(
            f"the database belongs to chain {recorded.chain_id}, not {settings.chain_id} "
            "(JAMINS_CHAIN_ID)"
        )


async def _deploy(settings: Settings, client: ChainClient, signer: Signer) -> tuple[str, int]:
    try:
        return await deploy_registrar(
            client, signer, GasPolicy(settings.chain_id, settings.gas_price_wei), deployment_data()
        )
    except ChainRejected as exc:
        reason = " ".join(str(exc).split())
        hint = ""
        if "insufficient funds" in reason.lower():
            hint = ": fund that account with gas for the deployment, then start again"
        raise ProvisionError(
            f"the node refused to deploy the registrar from the signer {signer.address} "
            f"({reason}){hint}"
        ) from None


async def provision_registrar(
    settings: Settings,
    client: ChainClient,
    signer: Signer | None,
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    deploy: bool = False,
) -> Registrar:
    """The configured, recorded, or newly deployed registrar, recorded in the database.

    Deploys only when nothing is configured or recorded, and only on the embedded node,
    with JAMINS_DEPLOY=true, or with `deploy` (`jamins deploy`). Call it under the
    provisioning lock, on a migrated database."""
    await client.check_chain_id(settings.chain_id)
    recorded = await read_recorded(sessionmaker)
    _check_chain(settings, recorded)
    address = settings.contract_address or recorded.registrar_address
    deployed_block: int | None = None
    if address is None:
        if not (settings.embedded or settings.deploy or deploy):
            raise ProvisionError(
                "no registrar address: set JAMINS_CONTRACT_ADDRESS, run `jamins deploy`, "
                "or set JAMINS_DEPLOY=true to deploy one on first start"
            )
        if signer is None:
            raise ProvisionError(
                "deploying the registrar needs a signer key: set JAMINS_SIGNER_KEY or "
                "JAMINS_SIGNER_KEY_FILE"
            )
        # The embedded key's first transaction deploys the registrar, so a lost database
        # finds it again at the key's first CREATE address instead of deploying anew.
        first = create_address(signer.address, 0)
        if settings.embedded and await Registrar(client, first).is_deployed():
            address = first
        else:
            address, deployed_block = await _deploy(settings, client, signer)
            logger.info("deployed the registrar at %s in block %d", address, deployed_block)
    registrar = Registrar(client, address)
    if not await registrar.is_deployed():
        raise ProvisionError(f"no contract at {address} on the chain at {client.url}")
    async with session_scope(sessionmaker) as session, session.begin():
        await set_meta(session, META_REGISTRAR, address.lower())
        await set_meta(session, META_CHAIN_ID, str(settings.chain_id))
        if deployed_block is not None:
            await set_meta(session, META_REGISTRAR_BLOCK, str(deployed_block))
    return registrar


async def recorded_registrar(
    settings: Settings, client: ChainClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> Registrar:
    """The registrar provisioning recorded: what a worker serves (it never deploys)."""
    recorded = await read_recorded(sessionmaker)
    _check_chain(settings, recorded)
    if recorded.registrar_address is None:
        raise ProvisionError(
            "the database records no registrar: provision it first (`jamins serve` does "
            "before starting its workers; or `jamins deploy`)"
        )
    return Registrar(client, recorded.registrar_address)


async def indexer_start_block(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> int:
    """JAMINS_INDEX_FROM_BLOCK, else the block this database's registrar was deployed in
    (when provisioning deployed it), else 0."""
    if settings.index_from_block is not None:
        return settings.index_from_block
    recorded = await read_recorded(sessionmaker)
    return recorded.registrar_block or 0


async def provision_database(
    settings: Settings,
    engine: AsyncEngine,
    client: ChainClient,
    signer: Signer | None,
    *,
    deploy: bool = False,
) -> Registrar:
    """Migrate, then find or deploy the registrar and record it, under the lock."""
    try:
        async with provisioning_lock(settings, engine):
            await asyncio.to_thread(migrate, settings)
            return await provision_registrar(
                settings, client, signer, make_sessionmaker(engine), deploy=deploy
            )
    except _DATABASE_DOWN as exc:
        # The lock and the migrations use the database first; later steps' errors are
        # already DatabaseUnavailable (app.db.session_scope).
        raise _database_down(settings, exc) from None


_DATABASE_DOWN = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, OSError)


def _database_down(settings: Settings, exc: Exception) -> ProvisionError:
    url = sqlalchemy.engine.make_url(settings.sqlalchemy_url())
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return ProvisionError(
        f"cannot reach the database {url.render_as_string(hide_password=True)} "
        f"(JAMINS_DATABASE_URL): {reason}"
    )


def migrate_database(settings: Settings) -> None:
    """The schema step alone (`jamins migrate`); a database that does not answer is one
    ProvisionError line."""
    try:
        migrate(settings)
    except _DATABASE_DOWN as exc:
        raise _database_down(settings, exc) from None


def provision(settings: Settings, *, deploy: bool = False) -> str:
    """Provision on the configured node (JAMINS_RPC_URL); returns the registrar's address.

    What `jamins serve` runs once before its workers start, and `jamins deploy` (with
    `deploy`). The embedded default provisions in its serving process (module docstring)."""
    if settings.embedded:
        raise ProvisionError("the embedded default provisions itself: set JAMINS_RPC_URL")
    return asyncio.run(_provision(settings, deploy))


async def _provision(settings: Settings, deploy: bool) -> str:
    signer = load_signer(settings)
    assert settings.rpc_url is not None
    engine = make_async_engine(settings)
    client = ChainClient(settings.rpc_url, timeout=max(settings.rpc_timeout, 30))
    try:
        registrar = await provision_database(settings, engine, client, signer, deploy=deploy)
    finally:
        await client.close()
        await engine.dispose()
    return registrar.address.lower()
