"""What geth 1.13.15 answers that anvil does not, on the real binary, and how the chain
client (app/chain/client.py) turns each answer into something the server can act on."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_typing import HexStr

from app.chain.anvil import AnvilRPCError
from app.chain.client import (
    BATCH_LIMIT,
    ChainClient,
    ChainRejected,
    StateUnavailable,
    TxIndexing,
)
from app.chain.registrar import Registrar, create_address, deployment_data
from app.db import make_async_engine, make_sessionmaker
from app.errors import ChainUnavailable
from app.settings import Settings
from app.workers.indexer import Indexer
from tests.conftest import funded_key, unique_name
from tests.geth import GethNode
from tests.jami_keys import make_account
from tests.server import ServerProcess

ZERO_ADDRESS = "0x" + "00" * 20


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def with_client(url: str, work: Any) -> Any:
    client = ChainClient(url, timeout=10)
    try:
        return await work(client)
    finally:
        await client.close()


def raw_post(url: str, payload: Any) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def young_geth(geth_binary: str, tmp_path: Path) -> Iterator[GethNode]:
    """A fresh chain at block 0 (not waited past Constantinople), 2 s blocks."""
    node = GethNode(tmp_path, binary=geth_binary, chain_id=4343, period=2)
    node.start(wait_block=0)
    try:
        yield node
    finally:
        node.stop()


# -- unknown transactions while the node indexes ------------------------------------------


def test_receipt_while_geth_indexes_transactions_is_not_yet(
    geth_binary: str, tmp_path: Path
) -> None:
    """A fresh geth answers "transaction indexing is in progress" until its first index run
    (well under a second): the client reads that as "not known yet", never as a refusal."""
    seen_indexing = False
    for attempt in range(3):
        node = GethNode(tmp_path / str(attempt), binary=geth_binary, chain_id=4344, mine=False)
        node.start(wait_block=0)
        try:
            unknown = "0x" + secrets.token_hex(32)

            async def probe(client: ChainClient, tx: str = unknown) -> tuple[Any, Any]:
                raw = await client.w3.provider.make_request(
                    "eth_getTransactionReceipt",
                    [tx],
                )
                return raw, await client.receipt(tx)

            raw, receipt = run(with_client(node.url, probe))
            assert receipt is None
            if raw.get("error", {}).get("message") == "transaction indexing is in progress":
                seen_indexing = True

                async def known(client: ChainClient, tx: str = unknown) -> bool:
                    return await client.transaction_known(tx)

                # Whether the node holds a transaction cannot be told yet: transient.
                try:
                    run(with_client(node.url, known))
                except TxIndexing as exc:
                    assert isinstance(exc, ChainUnavailable)
                break
        finally:
            node.stop()
    assert seen_indexing, "geth never answered 'transaction indexing is in progress'"


# -- batches ------------------------------------------------------------------------------


def test_batch_over_geth_limit_is_split(geth: GethNode) -> None:
    over = [{"jsonrpc": "2.0", "id": i, "method": "eth_chainId", "params": []} for i in range(1001)]
    refused = raw_post(geth.url, over)
    assert refused == [
        {"jsonrpc": "2.0", "id": 0, "error": {"code": -32600, "message": "batch too large"}}
    ] or (len(refused) == 1 and refused[0]["error"]["message"] == "batch too large")
    count = 2 * BATCH_LIMIT + 1
    calls = [("eth_getBlockByNumber", [hex(number % 5), False]) for number in range(count)]

    async def batch(client: ChainClient) -> list[Any]:
        return await client.rpc_batch(calls)

    blocks = run(with_client(geth.url, batch))
    assert [int(block["number"], 16) for block in blocks] == [n % 5 for n in range(count)]


def test_indexer_block_hashes_over_1000_blocks_on_geth(geth: GethNode, tmp_path: Path) -> None:
    """With JAMINS_REORG_WINDOW >= 1000 the indexer asks for the hashes of more than 1000
    blocks at once (the window, or a roll-back's span): geth must answer, not refuse the
    batch for good. Blocks past the head answer null and are left out."""
    settings = Settings(
        _env_file=None, data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'i.sqlite3'}"
    )

    async def hashes(client: ChainClient) -> dict[int, str]:
        engine = make_async_engine(settings)
        try:
            indexer = Indexer(
                sessionmaker=make_sessionmaker(engine),
                client=client,
                registrar=Registrar(client, ZERO_ADDRESS),
                start_block=0,
                reorg_window=2500,
            )
            return await indexer._hashes(0, 2500)
        finally:
            await engine.dispose()

    head = geth.block_number()
    found = run(with_client(geth.url, hashes))
    assert set(range(head + 1)) <= set(found)
    assert found[0] == geth.rpc("eth_getBlockByNumber", ["0x0", False])["hash"]


# -- a young chain on the Jami fork schedule ----------------------------------------------


def test_young_jami_schedule_chain_errors_are_transient(young_geth: GethNode) -> None:
    """Before block 3 geth refuses EIP-155 transactions over RPC (while its pool keeps
    them), and before block 5 the registrar's code cannot run. Both are the chain's age,
    not the request's fault: transient, never a refusal that would fail a registration.
    Receipts of blocks before Byzantium (4) have no `status`: the client derives it."""
    node = young_geth
    bank = node.bank
    deploy = bank.sign_transaction(
        {
            "nonce": 0,
            "gasPrice": 10**9,
            "gas": 3_000_000,
            "data": deployment_data(),
            "chainId": node.chain_id,
            "value": 0,
        }
    )
    # A transaction that fails: its code is the INVALID opcode.
    failing = bank.sign_transaction(
        {"nonce": 1, "gasPrice": 10**9, "gas": 100_000, "data": "0xfe", "chainId": node.chain_id}
    )
    registrar_address = create_address(bank.address, 0)

    async def young(client: ChainClient) -> None:
        assert await client.block_number() < 3
        for signed in (deploy, failing):
            with pytest.raises(ChainUnavailable, match="EIP-155"):
                await client.call(client.w3.eth.send_raw_transaction(signed.raw_transaction))
        # geth's pool kept them: they are mined at block 3, before Byzantium.
        while (receipt := await client.receipt(deploy.hash.to_0x_hex())) is None:
            await asyncio.sleep(0.2)
        assert receipt["blockNumber"] < 4
        raw = await client.rpc("eth_getTransactionReceipt", [deploy.hash.to_0x_hex()])
        assert "status" not in raw and "root" in raw
        assert receipt["status"] == 1
        failed = await client.receipt(failing.hash.to_0x_hex())
        assert failed is not None and failed["status"] == 0
        # Block 3 or 4: the registrar is there, its code needs Constantinople (block 5).
        registrar = Registrar(client, registrar_address)
        data = registrar.reserve_for_data(
            name="young",
            owner=bank.address[2:],
            jami_id=secrets.token_hex(20),
            publickey="",
            signature="",
        )
        assert await client.block_number() < 5
        with pytest.raises(ChainUnavailable, match="fork"):
            await client.call(
                client.w3.eth.estimate_gas(
                    {"from": bank.address, "to": registrar.address, "data": HexStr(data)}
                )
            )
        while await client.block_number() < 5:
            await asyncio.sleep(0.2)
        estimate = await client.call(
            client.w3.eth.estimate_gas(
                {"from": bank.address, "to": registrar.address, "data": HexStr(data)}
            )
        )
        assert estimate > 21_000

    run(with_client(node.url, young))


# -- a node that is not an archive --------------------------------------------------------


def test_state_dropped_by_a_full_node_is_state_unavailable(
    geth_binary: str, tmp_path: Path
) -> None:
    """`--gcmode full` keeps recent states in memory only: after a restart a call at an
    older block (whose state differs from the head's) is "missing trie node"."""
    node = GethNode(tmp_path, binary=geth_binary, chain_id=4345, archive=False)
    node.start()
    try:
        receipts = []
        for _ in range(3):  # three state changes in three blocks at least
            receipts.append(
                node.wait_receipt(node.send_from_bank({"to": ZERO_ADDRESS, "value": 1}))
            )
        old = int(receipts[0]["blockNumber"], 16)
        node.stop()
        node.start()
        node.wait_for_block(old + 3)

        async def at_old_block(client: ChainClient) -> None:
            with pytest.raises(StateUnavailable) as caught:
                await client.rpc("eth_getBalance", [ZERO_ADDRESS, hex(old)])
            assert isinstance(caught.value, ChainRejected)  # callers that know no better
            with pytest.raises(StateUnavailable):
                await client.rpc_batch(
                    [("eth_call", [{"to": ZERO_ADDRESS, "data": "0x"}, hex(old)])]
                )
            # The head's state is there.
            assert await client.rpc("eth_getBalance", [ZERO_ADDRESS, "latest"]) != "0x0"

        run(with_client(node.url, at_old_block))
    finally:
        node.stop()


# -- the fee cap --------------------------------------------------------------------------


def test_fee_over_txfeecap_keeps_registration_pending(geth: GethNode, tmp_path: Path) -> None:
    """geth refuses gas x price above --rpc.txfeecap (1 ether): the operator's gas price is
    wrong, not the registration. It stays pending and confirms once the price is fixed."""
    env = {
        "JAMINS_RPC_URL": geth.url,
        "JAMINS_CHAIN_ID": str(geth.chain_id),
        "JAMINS_DEPLOY": "true",
        "JAMINS_SIGNER_KEY": funded_key(geth),
        "JAMINS_RECEIPT_POLL_SECONDS": "0.2",
    }
    server = ServerProcess(data_dir=tmp_path / "server", env=env)
    server.start()
    try:
        name, account = unique_name("feecap"), make_account()
        server.stop()
        server.env["JAMINS_GAS_PRICE_WEI"] = str(10**14)  # x ~200k gas = 20 ether
        server.start()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert (
                http.post(f"/name/{name}", json=account.registration_body(name)).status_code == 200
            )
            deadline = time.monotonic() + 60
            # More refusals than the writer's attempts at a refused transaction (5).
            while server.log_tail(200_000).count("refused the registration") < 6:
                assert time.monotonic() < deadline, server.log_tail()
                time.sleep(0.5)
            assert "--rpc.txfeecap" in server.log_tail(200_000)
            assert http.get(f"/registrations/{name}").json()["state"] == "pending"
        server.stop()
        del server.env["JAMINS_GAS_PRICE_WEI"]
        server.start()
        assert server.wait_settled(name, timeout=60)["state"] == "confirmed"
    finally:
        server.stop()


def test_anvil_and_geth_rpc_errors_reach_callers_as_rejections(geth: GethNode) -> None:
    """An ordinary refusal stays a ChainRejected (e.g. a nonce already used)."""
    bank = geth.bank
    nonce = int(geth.rpc("eth_getTransactionCount", [bank.address, "latest"]), 16)
    if nonce == 0:
        geth.fund(ZERO_ADDRESS, 1)
        nonce = 1
    stale = bank.sign_transaction(
        {
            "nonce": 0,
            "gasPrice": 10**9,
            "gas": 21_000,
            "to": ZERO_ADDRESS,
            "value": 1,
            "chainId": geth.chain_id,
        }
    )

    async def send(client: ChainClient) -> None:
        with pytest.raises(ChainRejected, match="nonce too low"):
            await client.call(client.w3.eth.send_raw_transaction(stale.raw_transaction))

    run(with_client(geth.url, send))
    with pytest.raises(AnvilRPCError):
        geth.rpc("eth_sendRawTransaction", ["0x" + stale.raw_transaction.hex()])


@pytest.mark.slow
def test_registration_decided_after_a_full_node_dropped_its_state(
    geth_binary: str, tmp_path: Path
) -> None:
    """On a node that is not an archive (--gcmode full), a registration mined in a block
    whose state the node no longer has (here: dropped by a restart) is still decided:
    nothing waits for ever on state the node will never have again."""
    node = GethNode(tmp_path / "geth", binary=geth_binary, chain_id=4848, archive=False)
    node.start()
    env = {
        "JAMINS_RPC_URL": node.url,
        "JAMINS_CHAIN_ID": str(node.chain_id),
        "JAMINS_DEPLOY": "true",
        "JAMINS_SIGNER_KEY": funded_key(node),
        "JAMINS_RECEIPT_POLL_SECONDS": "0.2",
        # Not decided until 3 blocks deep: the server is stopped before that.
        "JAMINS_CONFIRMATIONS": "3",
    }
    server = ServerProcess(data_dir=tmp_path / "server", env=env)
    server.start()
    try:
        name, account = unique_name("pruned"), make_account()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            answer = http.post(f"/name/{name}", json=account.registration_body(name))
            assert answer.status_code == 200
        tx_hash = str(server.wait_sent(name)["tx"])
        server.stop()
        mined = int(node.wait_receipt(tx_hash)["blockNumber"], 16)
        for _ in range(3):  # later state changes: the registration block's state is unique
            node.wait_receipt(node.send_from_bank({"to": ZERO_ADDRESS, "value": 1}))
        node.stop()
        node.start()

        async def state_gone(client: ChainClient) -> None:
            with pytest.raises(StateUnavailable):
                await client.rpc("eth_getBalance", [ZERO_ADDRESS, hex(mined)])

        run(with_client(node.url, state_gone))
        server.env["JAMINS_CONFIRMATIONS"] = "0"
        server.start()
        settled = server.wait_settled(name, timeout=60)
        assert settled["state"] == "confirmed", settled
        assert settled["block"] == mined
    finally:
        server.stop()
        node.stop()
