"""Provisioning (app.provision) in process, on the session's anvil node and a fresh SQLite
file per test: it deploys once, a second run finds what the first recorded, a worker only
reads it, and what an operator got wrong is one line at once."""

from __future__ import annotations

import asyncio
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from pydantic import SecretStr

from app.chain.anvil import AnvilNode, rpc
from app.chain.client import ChainClient, ChainIdMismatch
from app.db import make_async_engine, make_sessionmaker, migrate, session_scope, set_meta
from app.provision import (
    META_CHAIN_ID,
    ProvisionError,
    Recorded,
    provision,
    read_recorded,
    recorded_registrar,
)
from app.runtime import open_runtime
from app.settings import Settings
from tests.conftest import funded_key
from tests.server import free_port


def settings_for(node: AnvilNode, data_dir: Path, **values: Any) -> Settings:
    return Settings(rpc_url=node.url, data_dir=data_dir, _env_file=None, **values)


def nonce_of(node: AnvilNode, key: str) -> int:
    address = Account.from_key(key).address
    return int(rpc(node.url, "eth_getTransactionCount", [address, "latest"]), 16)


def recorded_in(settings: Settings) -> Recorded:
    async def read() -> Recorded:
        engine = make_async_engine(settings)
        try:
            return await read_recorded(make_sessionmaker(engine))
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_provision_deploys_once_and_records_it(anvil: AnvilNode, tmp_path: Path) -> None:
    key = funded_key(anvil)
    settings = settings_for(anvil, tmp_path, deploy=True, signer_key=SecretStr(key))

    address = provision(settings)

    recorded = recorded_in(settings)
    assert recorded.registrar_address == address
    assert recorded.chain_id == settings.chain_id
    assert recorded.registrar_block is not None and recorded.registrar_block > 0
    assert nonce_of(anvil, key) == 1


def test_a_second_provision_finds_the_recorded_registrar(anvil: AnvilNode, tmp_path: Path) -> None:
    key = funded_key(anvil)
    settings = settings_for(anvil, tmp_path, deploy=True, signer_key=SecretStr(key))
    first = provision(settings)

    assert provision(settings) == first
    # `jamins deploy` on a provisioned database deploys nothing either.
    assert provision(settings, deploy=True) == first
    assert nonce_of(anvil, key) == 1


def test_provisioners_of_one_database_take_turns(anvil: AnvilNode, tmp_path: Path) -> None:
    keys = [funded_key(anvil), funded_key(anvil)]
    each = [settings_for(anvil, tmp_path, deploy=True, signer_key=SecretStr(key)) for key in keys]

    with ThreadPoolExecutor(max_workers=2) as both:
        addresses = list(both.map(provision, each))

    assert addresses[0] == addresses[1]
    assert sorted(nonce_of(anvil, key) for key in keys) == [0, 1]


def test_a_worker_reads_what_provisioning_recorded(anvil: AnvilNode, tmp_path: Path) -> None:
    key = funded_key(anvil)
    settings = settings_for(anvil, tmp_path, deploy=True, signer_key=SecretStr(key))
    address = provision(settings)

    async def served() -> str:
        async with open_runtime(settings, provision=False) as runtime:
            return runtime.registrar.address.lower()

    assert asyncio.run(served()) == address
    assert nonce_of(anvil, key) == 1


def test_a_worker_without_provisioning_refuses_in_one_line(
    anvil: AnvilNode, tmp_path: Path
) -> None:
    settings = settings_for(anvil, tmp_path)
    migrate(settings)

    async def read() -> None:
        engine = make_async_engine(settings)
        client = ChainClient(anvil.url, timeout=5)
        try:
            await recorded_registrar(settings, client, make_sessionmaker(engine))
        finally:
            await client.close()
            await engine.dispose()

    with pytest.raises(ProvisionError, match="records no registrar") as refused:
        asyncio.run(read())
    assert "\n" not in str(refused.value)


def test_provision_refuses_a_node_of_another_chain(anvil: AnvilNode, tmp_path: Path) -> None:
    settings = settings_for(anvil, tmp_path, deploy=True, chain_id=1337)

    with pytest.raises(ChainIdMismatch, match="serves chain id 1551, not the configured 1337") as e:
        provision(settings)
    assert "\n" not in str(e.value)


def test_provision_refuses_a_database_of_another_chain(anvil: AnvilNode, tmp_path: Path) -> None:
    key = funded_key(anvil)
    settings = settings_for(anvil, tmp_path, deploy=True, signer_key=SecretStr(key))
    migrate(settings)

    async def record_another_chain() -> None:
        engine = make_async_engine(settings)
        try:
            async with session_scope(make_sessionmaker(engine)) as session, session.begin():
                await set_meta(session, META_CHAIN_ID, "7")
        finally:
            await engine.dispose()

    asyncio.run(record_another_chain())

    with pytest.raises(ProvisionError, match="belongs to chain 7, not 1551") as refused:
        provision(settings)
    assert "\n" not in str(refused.value)
    assert nonce_of(anvil, key) == 0


def test_provision_without_an_address_or_deploy_says_what_to_set(
    anvil: AnvilNode, tmp_path: Path
) -> None:
    with pytest.raises(ProvisionError, match="no registrar address: set JAMINS_CONTRACT_ADDRESS"):
        provision(settings_for(anvil, tmp_path))


def test_an_unfunded_signer_fails_at_once_in_one_line(anvil: AnvilNode, tmp_path: Path) -> None:
    key = "0x" + secrets.token_hex(32)
    settings = settings_for(anvil, tmp_path, deploy=True, signer_key=SecretStr(key))

    with pytest.raises(ProvisionError, match=r"(?i)insufficient funds") as refused:
        provision(settings)

    message = str(refused.value)
    assert "\n" not in message
    assert Account.from_key(key).address in message
    assert "fund that account" in message
    assert recorded_in(settings).registrar_address is None


def test_the_embedded_node_finds_its_registrar_again_without_its_database(
    tmp_path: Path, anvil_binary: str
) -> None:
    settings = Settings(data_dir=tmp_path, anvil_path=anvil_binary, _env_file=None)

    async def served() -> str:
        async with open_runtime(settings, provision=True) as runtime:
            assert runtime.node is not None
            return runtime.registrar.address.lower()

    first = asyncio.run(served())
    for database in tmp_path.glob("jamins.sqlite3*"):
        database.unlink()
    assert asyncio.run(served()) == first


def test_provision_with_the_database_down_says_so_in_one_line(
    anvil: AnvilNode, tmp_path: Path
) -> None:
    url = f"postgresql://jamins:secret@127.0.0.1:{free_port()}/jamins"
    settings = settings_for(anvil, tmp_path, deploy=True, database_url=url)

    with pytest.raises(ProvisionError, match="cannot reach the database") as refused:
        provision(settings)

    message = str(refused.value)
    assert "\n" not in message and "JAMINS_DATABASE_URL" in message
    assert "secret" not in message
