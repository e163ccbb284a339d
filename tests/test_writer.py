"""The transaction writer against an in-process node that keeps no history (tests/
fake_chain.py): outcomes are decided from receipts and their logs, and the current state,
never from state at a past block. Deterministic: the test decides when blocks are mined
and who else writes in them."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.chain.registrar import Registrar
from app.chain.signer import Signer
from app.db import make_async_engine, make_sessionmaker, migrate, session_scope
from app.models import PENDING, NameRecord, Registration
from app.settings import Settings
from app.workers.reconcile import reopen
from app.workers.writer import GasPolicy, TxWriter
from tests.fake_chain import CHAIN_ID, REGISTRAR, FakeNode

DB = async_sessionmaker[AsyncSession]
Scenario = Callable[[FakeNode, TxWriter, DB], Awaitable[None]]


def run_with_writer(tmp_path: Path, node: FakeNode, scenario: Scenario, **writer: Any) -> None:
    settings = Settings(
        _env_file=None, data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'w.sqlite3'}"
    )
    migrate(settings)

    async def go() -> None:
        engine = make_async_engine(settings)
        try:
            client = node.client()
            tx_writer = TxWriter(
                sessionmaker=make_sessionmaker(engine),
                client=client,
                registrar=Registrar(client, REGISTRAR),
                signer=Signer(Account.from_key("0x" + secrets.token_hex(32))),
                policy=GasPolicy(CHAIN_ID, None),
                poll_seconds=writer.pop("poll_seconds", 0.01),
                max_in_flight=writer.pop("max_in_flight", 4),
                **writer,
            )
            await scenario(node, tx_writer, make_sessionmaker(engine))
        finally:
            await engine.dispose()

    asyncio.run(go())


async def accept(sessionmaker: async_sessionmaker[AsyncSession], name: str, jami_id: str) -> None:
    """A registration as NameService.register leaves it: pending, with its name record."""
    async with session_scope(sessionmaker) as session, session.begin():
        fields = {"name": name, "folded_name": name, "addr": jami_id, "owner": "0" * 40}
        session.add(
            Registration(
                **fields,
                publickey="K",
                signature="S",
                claim_name=name,
                claim_addr=jami_id,
                state=PENDING,
            )
        )
        session.add(NameRecord(**fields, publickey="K", signature="S", pending=True))


async def states(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> dict[str, tuple[str, str | None]]:
    async with session_scope(sessionmaker) as session:
        rows = await session.scalars(select(Registration).order_by(Registration.id))
        return {row.name: (row.state, row.reason) for row in rows}


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
def node() -> FakeNode:
    return FakeNode(automine=False)


def test_settle_after_another_block_on_a_node_without_history_confirms(
    tmp_path: Path, node: FakeNode
) -> None:
    async def scenario(
        node: FakeNode, writer: TxWriter, db: async_sessionmaker[AsyncSession]
    ) -> None:
        await accept(db, "alice", "a1" * 20)
        await writer.step()  # sent, not mined
        node.mine()  # ours
        node.direct_reserve_for("0x" + "77" * 20, "other", "77" * 20, "b2" * 20)
        node.mine()  # another account's: our block's state is gone
        await writer.step()
        assert await states(db) == {"alice": ("confirmed", None)}
        # The row's owner was zero (an old row): the signer owns the record, never zero.
        record = node.records[b"alice".ljust(32, b"\0")]
        assert record.owner == writer.signer.address.lower()[2:]

    run_with_writer(tmp_path, node, scenario)


def test_settle_name_taken_in_the_same_block_fails_without_history(
    tmp_path: Path, node: FakeNode
) -> None:
    async def scenario(
        node: FakeNode, writer: TxWriter, db: async_sessionmaker[AsyncSession]
    ) -> None:
        await accept(db, "bob", "a2" * 20)
        # Another account's reserveFor of the same name is mined first, in our block.
        node.direct_reserve_for("0x" + "77" * 20, "bob", "77" * 20, "b3" * 20)
        await writer.step()
        node.mine()
        node.mine()
        await writer.step()
        state, reason = (await states(db))["bob"]
        assert state == "failed"
        assert reason is not None and "b3" * 20 in reason

    run_with_writer(tmp_path, node, scenario)


def test_settle_receipt_without_status_is_decided_from_its_logs(
    tmp_path: Path, node: FakeNode
) -> None:
    async def scenario(
        node: FakeNode, writer: TxWriter, db: async_sessionmaker[AsyncSession]
    ) -> None:
        await accept(db, "carol", "a3" * 20)
        await accept(db, "dave", "a4" * 20)
        node.direct_reserve_for("0x" + "77" * 20, "dave", "77" * 20, "b4" * 20)
        await writer.step()
        node.mine()
        for receipt in node.receipts.values():
            receipt.pop("status")  # pre-Byzantium receipts have none
        node.mine()
        await writer.step()
        found = await states(db)
        assert found["carol"] == ("confirmed", None)
        assert found["dave"][0] == "failed"

    run_with_writer(tmp_path, node, scenario)


def test_writer_that_cannot_progress_reports_it(tmp_path: Path, node: FakeNode) -> None:
    async def scenario(
        node: FakeNode, writer: TxWriter, db: async_sessionmaker[AsyncSession]
    ) -> None:
        await accept(db, "erin", "a5" * 20)
        node.rpc_error = "internal error: something the writer cannot get past"
        task = asyncio.create_task(writer.run())
        try:
            async with asyncio.timeout(5):
                while writer.problem() is None:
                    await asyncio.sleep(0.01)
            assert "internal error" in (writer.problem() or "")
            node.rpc_error = None
            node.automine = True
            async with asyncio.timeout(5):
                while writer.problem() is not None or (await states(db))["erin"][0] == "pending":
                    writer.wake()
                    await asyncio.sleep(0.01)
        finally:
            await stop(task)
        assert (await states(db))["erin"] == ("confirmed", None)

    run_with_writer(tmp_path, node, scenario)


def test_writer_with_every_slot_in_flight_waits(tmp_path: Path, node: FakeNode) -> None:
    async def scenario(
        node: FakeNode, writer: TxWriter, db: async_sessionmaker[AsyncSession]
    ) -> None:
        for index in range(3):
            await accept(db, f"slot{index}", f"c{index}" * 20)
        task = asyncio.create_task(writer.run())
        await asyncio.sleep(0.5)
        await stop(task)
        # Two slots, both in flight and never mined: a few node calls per 100 ms poll.
        assert node.calls < 60, node.calls

    run_with_writer(tmp_path, node, scenario, max_in_flight=2, poll_seconds=0.1)


def test_reorg_reopened_registration_leaves_no_nonce_gap(tmp_path: Path, node: FakeNode) -> None:
    """A reorg drops the first of three transactions in flight and reconcile hands its
    registration back to be signed anew: its nonce is now a gap under the other two,
    which the node keeps queued forever unless the writer notices and fills it."""

    async def scenario(node: FakeNode, writer: TxWriter, db: DB) -> None:
        for index in range(3):
            await accept(db, f"gap{index}", f"d{index}" * 20)
        await writer.step()  # nonces 0, 1, 2 in flight
        async with session_scope(db) as session, session.begin():
            first = await session.scalar(select(Registration).where(Registration.nonce == 0))
            assert first is not None
            dropped = first.tx_hash
            await reopen(session, first, resign=True)
        del node.pool[str(dropped)]
        for _ in range(4):
            await writer.step()
            node.mine()
        await writer.step()
        assert {name: state for name, (state, _) in (await states(db)).items()} == {
            "gap0": "confirmed",
            "gap1": "confirmed",
            "gap2": "confirmed",
        }

    run_with_writer(tmp_path, node, scenario)


def test_writer_paused_by_an_outage_too_long_reports_it(tmp_path: Path, node: FakeNode) -> None:
    async def scenario(node: FakeNode, writer: TxWriter, db: DB) -> None:
        await accept(db, "fay", "a6" * 20)
        node.refuse = True  # an outage: the writer waits, and says so after stuck_after
        task = asyncio.create_task(writer.run())
        try:
            async with asyncio.timeout(5):
                while writer.problem() is None:
                    await asyncio.sleep(0.01)
            assert "paused" in (writer.problem() or "")
            node.refuse = False
            node.automine = True
            async with asyncio.timeout(5):
                while writer.problem() is not None:
                    writer.wake()
                    await asyncio.sleep(0.01)
        finally:
            await stop(task)

    run_with_writer(tmp_path, node, scenario, stuck_after=0.2)


def test_idle_writer_asks_the_node_nothing(tmp_path: Path, node: FakeNode) -> None:
    """Nothing in flight and nothing to send: a step (one every receipt poll, for as long as
    the server runs) sends the node no request."""

    async def scenario(
        node: FakeNode, writer: TxWriter, db: async_sessionmaker[AsyncSession]
    ) -> None:
        await accept(db, "idle", "1d" * 20)
        await writer.step()  # its start (reconcile, nonces) and the send
        node.mine()
        await writer.step()
        assert await states(db) == {"idle": ("confirmed", None)}
        node.methods.clear()
        for _ in range(3):
            assert await writer.step() is False
        assert node.methods == []

    run_with_writer(tmp_path, node, scenario)


def test_burst_of_acceptances_is_sent_once_the_wake_ups_stop(
    tmp_path: Path, node: FakeNode
) -> None:
    """Each acceptance wakes the writer; its step runs on the loop that acknowledges the
    others. While wake-ups keep coming less than quiet_seconds apart, it waits (at most
    quiet_max_seconds), then sends the burst in one step."""

    async def scenario(node: FakeNode, writer: TxWriter, db: DB) -> None:
        task = asyncio.create_task(writer.run())
        try:
            await asyncio.sleep(0.2)  # its first step: nothing to send
            node.methods.clear()
            for index in range(15):  # 0.3 s of wake-ups, 0.02 s apart
                await accept(db, f"burst{index}", f"{0xB00 + index:040x}")
                writer.wake()
                await asyncio.sleep(0.02)
            assert "eth_sendRawTransaction" not in node.methods
            async with asyncio.timeout(5):
                while node.methods.count("eth_sendRawTransaction") < 15:
                    await asyncio.sleep(0.01)
            # Wake-ups that never stop still let it send after quiet_max_seconds.
            node.methods.clear()
            await accept(db, "endless", "e" * 40)
            started = asyncio.get_running_loop().time()
            while "eth_sendRawTransaction" not in node.methods:
                writer.wake()
                await asyncio.sleep(0.02)
            assert asyncio.get_running_loop().time() - started < 2.0
        finally:
            await stop(task)

    run_with_writer(
        tmp_path,
        node,
        scenario,
        poll_seconds=30,
        max_in_flight=20,
        quiet_seconds=0.1,
        quiet_max_seconds=0.5,
    )
