"""Reorgs on a real Clique chain (geth 1.13.15), under a running name server.

Two Clique signers cannot fork by partition (they must alternate), so two geth nodes seal
with the *same* key: X (the node the server reads) and Y. Partitioned with
admin_removePeer, each seals its own branch; X stops sealing, Y gets ahead, and X adopts
Y's longer branch when they are peered again: every block X sealed alone is orphaned, with
the registrations in it. debug_setHead is the other case: a node that came back without
its last blocks (their transactions are not put back in its pool).

After each: every registration answered 200 is confirmed, bound on chain exactly once (one
`Changed` event for its name), and the server's SQL (its lookups) equals the chain.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from eth_utils.crypto import keccak

from app.names import to_bytes32
from tests.conftest import funded_key, unique_name
from tests.faults import chain_addr, quick_accounts
from tests.geth import GethNode
from tests.jami_keys import JamiAccount
from tests.server import ServerProcess

pytestmark = pytest.mark.slow

CHANGED = "0x" + keccak(text="Changed(bytes32)").hex()


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def block_hash(node: GethNode, number: int) -> str | None:
    block = node.rpc("eth_getBlockByNumber", [hex(number), False])
    return None if block is None else str(block["hash"])


class Pair:
    """X seals and serves the name server; Y has the same genesis and sealer key."""

    def __init__(self, x: GethNode, y: GethNode) -> None:
        self.x, self.y = x, y

    def connect(self) -> None:
        self.x.rpc("admin_addPeer", [self.y.enode()])
        wait_for(lambda: len(self.x.rpc("admin_peers")) == 1, "X and Y to peer")

    def partition(self) -> None:
        self.x.rpc("admin_removePeer", [self.y.enode()])
        self.y.rpc("admin_removePeer", [self.x.enode()])
        wait_for(
            lambda: not self.x.rpc("admin_peers") and not self.y.rpc("admin_peers"),
            "the partition",
        )

    def synced(self) -> bool:
        head = self.x.block_number()
        return self.y.block_number() >= head and block_hash(self.y, head) == block_hash(
            self.x, head
        )


@pytest.fixture
def pair(geth_binary: str, tmp_path: Path) -> Iterator[Pair]:
    x = GethNode(tmp_path / "x", binary=geth_binary, chain_id=4646, max_peers=2)
    y = GethNode(
        tmp_path / "y",
        binary=geth_binary,
        chain_id=4646,
        max_peers=2,
        mine=False,
        sealer_key=x.sealer.key.hex(),
        bank_key=x.bank.key.hex(),
        genesis_file=x.genesis_file,
    )
    x.start()
    y.start()
    try:
        pair = Pair(x, y)
        pair.connect()
        wait_for(pair.synced, "Y to sync from X")
        yield pair
    finally:
        y.stop()
        x.stop()


@pytest.fixture
def server_on_x(pair: Pair, tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(
        data_dir=tmp_path / "server",
        env={
            "JAMINS_RPC_URL": pair.x.url,
            "JAMINS_CHAIN_ID": str(pair.x.chain_id),
            "JAMINS_DEPLOY": "true",
            "JAMINS_SIGNER_KEY": funded_key(pair.x),
            "JAMINS_RECEIPT_POLL_SECONDS": "0.2",
            "JAMINS_INDEX_POLL_SECONDS": "0.3",
        },
    )
    server.start()
    # Y must hold the registrar too: it is deployed before any partition.
    wait_for(pair.synced, "Y to hold the registrar's block")
    try:
        yield server
    finally:
        server.stop()


def register(server: ServerProcess, names: list[str], accounts: list[JamiAccount]) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for name, account in zip(names, accounts, strict=True):
            answer = http.post(f"/name/{name}", json=account.registration_body(name))
            assert answer.status_code == 200, answer.text


def assert_sql_equals_chain(
    server: ServerProcess, node: GethNode, names: list[str], accounts: list[JamiAccount]
) -> None:
    """Eventually: each name bound on chain once, confirmed in SQL at the block that bound
    it, and the server's lookups say what the chain says."""
    contract = server.registrar_address()
    pairs = list(zip(names, accounts, strict=True))

    def changes(name: str) -> list[int]:
        logs = node.rpc(
            "eth_getLogs",
            [
                {
                    "address": contract,
                    "fromBlock": "0x0",
                    "toBlock": "latest",
                    "topics": [CHANGED, "0x" + to_bytes32(name).hex()],
                }
            ],
        )
        return [int(log["blockNumber"], 16) for log in logs]

    def settled() -> bool:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for name, account in pairs:
                if chain_addr(node.url, contract, name) != account.jami_id:
                    return False
                state = server.registration(name)
                if state["state"] != "confirmed" or [state["block"]] != changes(name):
                    return False
                if http.get(f"/name/{name}").json().get("addr") != "0x" + account.jami_id:
                    return False
                if http.get(f"/addr/{account.jami_id}").json() != {"name": name}:
                    return False
        return True

    try:
        wait_for(settled, "SQL to equal the chain", timeout=90)
    except AssertionError:
        report = [
            (
                name,
                chain_addr(node.url, contract, name) == a.jami_id,
                server.registration(name),
                changes(name),
            )
            for name, a in pairs
        ]
        raise AssertionError(f"head {node.block_number()}: {report}") from None


@pytest.mark.parametrize("depth", [1, 4, 12])
def test_partition_reorg_orphaning_confirmed_registrations(
    pair: Pair, server_on_x: ServerProcess, depth: int
) -> None:
    x, y = pair.x, pair.y
    names = [unique_name(f"reorg{depth}-") for _ in range(3)]
    accounts = quick_accounts(3, offset=40 + depth)
    pair.partition()
    fork = x.block_number()
    y.rpc("miner_start")
    register(server_on_x, names, accounts)
    blocks = []
    for name in names:  # confirmed on X's branch, which will be orphaned
        settled = server_on_x.wait_settled(name, timeout=60)
        assert settled["state"] == "confirmed"
        blocks.append(int(str(settled["block"])))
    x.wait_for_block(min(blocks) + depth - 1)
    x.rpc("miner_stop")
    orphaned_head = x.block_number()
    orphaned = {n: block_hash(x, n) for n in range(fork + 1, orphaned_head + 1)}
    y.wait_for_block(orphaned_head + 2)
    pair.connect()
    wait_for(pair.synced, "X to adopt Y's branch")
    reorged = [n for n, h in orphaned.items() if block_hash(x, n) != h]
    print(f"\npartition reorg: {len(reorged)} blocks orphaned on X (asked {depth})")
    assert len(reorged) >= depth
    assert_sql_equals_chain(server_on_x, x, names, accounts)


def test_set_head_drops_blocks_with_confirmed_registrations(
    pair: Pair, server_on_x: ServerProcess
) -> None:
    x = pair.x
    pair.partition()  # X alone: Y must not hand the dropped blocks back
    start = x.block_number()
    names = [unique_name("sethead") for _ in range(3)]
    accounts = quick_accounts(3, offset=60)
    register(server_on_x, names, accounts)
    for name in names:
        assert server_on_x.wait_settled(name, timeout=60)["state"] == "confirmed"
    x.wait_for_block(x.block_number() + 2)
    dropped = {n: block_hash(x, n) for n in range(start + 1, x.block_number() + 1)}
    x.rpc("debug_setHead", [hex(start)])
    x.wait_for_block(max(dropped) + 1)
    assert any(block_hash(x, n) != h for n, h in dropped.items())
    print(f"\nsetHead: back to block {start}, {len(dropped)} blocks dropped")
    assert_sql_equals_chain(server_on_x, x, names, accounts)
