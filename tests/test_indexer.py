"""The indexer against a real anvil node and a real SQLite file or PostgreSQL database:
backfill of names written directly on the contract, later changes, and reorgs."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from app.chain.anvil import AnvilNode
from app.chain.client import ChainClient
from app.chain.registrar import Registrar
from app.db import make_async_engine, make_sessionmaker, make_sync_engine, migrate
from app.models import NameRecord
from app.services.records import skipped_chain_names
from app.settings import Settings
from app.workers.indexer import Indexer
from tests.chain_tools import DirectRecord, DirectWriter, rpc
from tests.conftest import ChainNode, funded_key, unique_name
from tests.pg import PostgresServer

Mirror = dict[str, tuple[str, str, str | None, str | None]]


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.sqlite3'}"
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        url = postgres.create_database(f"index_{secrets.token_hex(4)}")
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=url)
    migrate(settings)
    return settings


@pytest.fixture
def own_node(anvil_binary: str) -> Iterator[AnvilNode]:
    """A node of the test's own, for snapshots and reverts that would disturb others."""
    with AnvilNode(binary=anvil_binary) as node:
        yield node


def records(count: int, *, key_chars: int = 0) -> list[DirectRecord]:
    return [
        DirectRecord(
            name=unique_name("bf"),
            jami_id=secrets.token_hex(20),
            publickey="K" * key_chars,
            signature="S" * (key_chars * 2 // 3),
        )
        for _ in range(count)
    ]


def run_indexer(settings: Settings, node_url: str, contract: str, start_block: int = 0) -> int:
    async def go() -> int:
        engine = make_async_engine(settings)
        client = ChainClient(node_url, timeout=30)
        try:
            indexer = Indexer(
                sessionmaker=make_sessionmaker(engine),
                client=client,
                registrar=Registrar(client, contract),
                start_block=start_block,
                initial_range=64,
            )
            return await indexer.catch_up()
        finally:
            await client.close()
            await engine.dispose()

    return asyncio.run(go())


def mirror(settings: Settings) -> Mirror:
    engine = make_sync_engine(settings)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(
                    NameRecord.name,
                    NameRecord.addr,
                    NameRecord.owner,
                    NameRecord.publickey,
                    NameRecord.signature,
                )
            ).all()
    finally:
        engine.dispose()
    return {row[0]: (row[1], row[2], row[3], row[4]) for row in rows}


def expected(writer: DirectWriter, written: list[DirectRecord]) -> Mirror:
    owner = writer.address.removeprefix("0x")
    return {
        record.name: (record.jami_id, owner, record.publickey or None, record.signature or None)
        for record in written
    }


@pytest.mark.nodes("anvil", "geth")
def test_index_backfills_names_written_directly(settings: Settings, node: ChainNode) -> None:
    writer = DirectWriter(node.url, funded_key(node))
    contract = writer.deploy()
    # On geth's 1 s blocks of 4.7M gas (about 25 such registrations each): fewer names.
    small, large = (600, 60) if isinstance(node, AnvilNode) else (60, 6)
    written = records(small) + records(large, key_chars=1068)
    writer.reserve_for(written)
    head = int(rpc(node.url, "eth_blockNumber", []), 16)
    assert run_indexer(settings, node.url, contract) >= head
    assert mirror(settings) == expected(writer, written)
    # Resuming indexes only what came since, and changes nothing else.
    later = records(5)
    writer.reserve_for(later)
    run_indexer(settings, node.url, contract)
    assert mirror(settings) == expected(writer, written + later)


@pytest.mark.nodes("anvil", "geth")
def test_index_follows_transfer_set_address_and_disown(settings: Settings, node: ChainNode) -> None:
    writer = DirectWriter(node.url, funded_key(node))
    contract = writer.deploy()
    moved, readdressed, dropped = written = records(3)
    writer.reserve_for(written)
    run_indexer(settings, node.url, contract)
    new_owner, new_id = secrets.token_hex(20), secrets.token_hex(20)
    writer.transfer(moved.name, "0x" + new_owner)
    writer.set_address(readdressed.name, new_id)
    writer.disown(dropped.name)
    run_indexer(settings, node.url, contract)
    now = mirror(settings)
    assert now[moved.name][1] == new_owner
    assert now[readdressed.name][0] == new_id
    assert dropped.name not in now


@pytest.mark.parametrize("longer", [True, False], ids=["longer-fork", "shorter-fork"])
def test_index_rolls_back_a_reorg(settings: Settings, own_node: AnvilNode, longer: bool) -> None:
    writer = DirectWriter(own_node.url, funded_key(own_node))
    contract = writer.deploy()
    kept = records(3)
    writer.reserve_for(kept)
    snapshot = rpc(own_node.url, "evm_snapshot", [])
    orphaned = records(4)
    writer.reserve_for(orphaned, batch=1)
    run_indexer(settings, own_node.url, contract)
    assert set(mirror(settings)) == {record.name for record in kept + orphaned}

    assert rpc(own_node.url, "evm_revert", [snapshot]) is True
    writer.nonce = int(
        rpc(own_node.url, "eth_getTransactionCount", [writer.address, "pending"]), 16
    )
    replacement = records(1)
    writer.reserve_for(replacement)
    if longer:
        rpc(own_node.url, "anvil_mine", [hex(10)])
    run_indexer(settings, own_node.url, contract)
    assert mirror(settings) == expected(writer, kept + replacement)


def test_index_skips_and_reports_chain_records_outside_the_name_policy(
    settings: Settings, anvil: AnvilNode
) -> None:
    """Names written on the contract that no lookup could ask for are not mirrored (not
    served), and each is remembered for `jamins export` to report. A name only the
    registration rules refuse (ASCII capitals, as written before the policy) is kept."""
    writer = DirectWriter(anvil.url, funded_key(anvil))
    contract = writer.deploy()
    tag = secrets.token_hex(3)
    good = [*records(1), DirectRecord(name=f"PG{tag}", jami_id=secrets.token_hex(20))]
    odd = [
        DirectRecord(name=name, jami_id=secrets.token_hex(20))
        for name in (f"raw{tag} ", f"a b{tag}", f"x/owner{tag}")
    ]
    writer.reserve_for(good + odd)
    run_indexer(settings, anvil.url, contract)
    assert mirror(settings) == expected(writer, good)

    async def skipped() -> list[tuple[str, str]]:
        engine = make_async_engine(settings)
        try:
            async with make_sessionmaker(engine)() as session:
                return await skipped_chain_names(session)
        finally:
            await engine.dispose()

    assert asyncio.run(skipped()) == sorted(
        (record.name, "outside the name policy") for record in odd
    )
