"""What the CLI's chain commands (index, import) open: database, node, registrar, signer.

On the embedded default the node belongs to whoever holds the leader lock: a command run
while `jamins serve` runs on the same data directory cannot start a second node on its
state, and says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.chain.anvil import AnvilNode
from app.chain.client import ChainClient
from app.chain.registrar import Registrar
from app.chain.signer import Signer, load_or_create_key_file, load_signer
from app.db import make_async_engine, make_sessionmaker, migrate
from app.main import (
    StartupError,
    fund_embedded_signer,
    resolve_registrar,
    start_embedded_node,
)
from app.settings import Settings
from app.workers.leader import DataDirInUse, DataDirLock, leader_lock


@dataclass
class ChainContext:
    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    client: ChainClient
    registrar: Registrar
    signer: Signer | None
    is_leader: bool


@contextlib.asynccontextmanager
async def open_chain(settings: Settings) -> AsyncIterator[ChainContext]:
    """Open everything a chain command needs; the leader lock is taken when free."""
    migrate(settings)
    engine = make_async_engine(settings)
    lock = leader_lock(engine, settings.sqlite_path())
    node: AnvilNode | None = None
    node_lock: DataDirLock | None = None
    client: ChainClient | None = None
    is_leader = await lock.try_acquire()
    try:
        signer = load_signer(settings)
        rpc_url = settings.rpc_url
        if settings.embedded:
            if not is_leader:
                raise StartupError(
                    "`jamins serve` is running on this data directory and owns its chain "
                    "node: stop it first, or point JAMINS_RPC_URL at a node"
                )
            node_lock = DataDirLock(settings.data_dir)
            try:
                node_lock.acquire()
            except DataDirInUse as exc:
                node_lock = None
                raise StartupError(str(exc)) from None
            node = start_embedded_node(settings)
            rpc_url = node.url
            if signer is None:
                signer = load_or_create_key_file(settings.data_dir / "signer.key")
        assert rpc_url is not None
        sessionmaker = make_sessionmaker(engine)
        client = ChainClient(rpc_url, timeout=max(settings.rpc_timeout, 30))
        await client.check_chain_id(settings.chain_id)
        if node is not None and signer is not None:
            await fund_embedded_signer(client, signer)
        registrar = await resolve_registrar(settings, client, signer, sessionmaker)
        yield ChainContext(settings, sessionmaker, client, registrar, signer, is_leader)
    finally:
        if client is not None:
            await client.close()
        await engine.dispose()
        # The node stops before the locks that keep a second one off its state go.
        if node is not None:
            node.stop()
        if node_lock is not None:
            node_lock.release()
        await lock.release()
