"""Faults: nothing accepted is lost, nothing is sent twice.

kill -9 with transactions in flight on a node with 1 s blocks; power loss of the embedded
default (the server and its node killed together, the node back from an older state
dump); the chain node and PostgreSQL going away under load; a reorg dropping a mined
registration. Each test prints what it observed (accepted, confirmed, failed, duplicated).
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from eth_account import Account

from app.chain.anvil import AnvilNode, rpc
from tests.chain_tools import DirectRecord, DirectWriter
from tests.conftest import ChainNode, funded_key, unique_name
from tests.faults import (
    Load,
    chain_addr,
    embedded_node_pid,
    embedded_node_url,
    nonce_count,
    quick_account,
    quick_accounts,
    sigkill,
)
from tests.geth import GethNode
from tests.jami_keys import JamiAccount
from tests.pg import PostgresServer
from tests.server import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def node(anvil_binary: str, tmp_path: Path) -> Iterator[AnvilNode]:
    """An automining node of this test's own, saving its state for a restart."""
    with AnvilNode(binary=anvil_binary, state_file=tmp_path / "state.json") as running:
        yield running


def _server_env(node: ChainNode, key: str, **extra: str) -> dict[str, str]:
    return {
        "JAMINS_RPC_URL": node.url,
        "JAMINS_CHAIN_ID": str(node.chain_id),
        "JAMINS_DEPLOY": "true",
        "JAMINS_SIGNER_KEY": key,
        "JAMINS_RECEIPT_POLL_SECONDS": "0.2",
        # The test's own node and registrar: pending names are answered at once.
        "JAMINS_REGISTRAR_EXCLUSIVE": "true",
        **extra,
    }


def _post(http: httpx.Client, name: str, body: dict[str, str]) -> int:
    return http.post(f"/name/{name}", json=body).status_code


@pytest.fixture(params=["anvil", "geth"])
def one_second_blocks(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChainNode]:
    """A node sealing a block every second: anvil's interval mining, or geth's Clique."""
    node: ChainNode
    if request.param == "anvil":
        node = AnvilNode(binary=request.getfixturevalue("anvil_binary"), block_time=1)
    else:
        node = GethNode(tmp_path / "geth", binary=request.getfixturevalue("geth_binary"))
    with node:
        yield node


def test_kill_9_with_pending_and_in_flight_registrations_on_1s_blocks(
    one_second_blocks: ChainNode, tmp_path: Path
) -> None:
    accepted = 12
    node = one_second_blocks
    key = funded_key(node)
    # Two in flight at a time, so the twelve take six 1 s blocks: when the first is
    # confirmed and the server is killed, two are sent and not mined and most wait unsent
    # in SQL. They are posted at once, so no pace of the client's changes that.
    server = ServerProcess(
        data_dir=tmp_path / "server", env=_server_env(node, key, JAMINS_MAX_IN_FLIGHT="2")
    )
    server.start()
    names = [unique_name("kill") for _ in range(accepted)]
    accounts = quick_accounts(accepted, offset=0)
    try:
        with (
            httpx.Client(base_url=server.url, timeout=30) as http,
            ThreadPoolExecutor(max_workers=accepted) as pool,
        ):
            posted = pool.map(
                lambda pair: _post(http, pair[0], pair[1].registration_body(pair[0])),
                zip(names, accounts, strict=True),
            )
            assert list(posted) == [200] * accepted
        # The twelve are accepted in no set order, so the kill waits for whichever is
        # confirmed first, not for names[0] (which may be the last one sent).
        states = _states_at_first_confirmation(server, names)
        server.kill()
    finally:
        server.stop()
    at_kill = {
        "confirmed": sum(s["state"] == "confirmed" for s in states),
        "in flight": sum(s["state"] == "pending" and bool(s["tx"]) for s in states),
        "unsent": sum(s["state"] == "pending" and not s["tx"] for s in states),
    }
    assert at_kill["unsent"] > 0, at_kill  # the kill came with work still queued

    server.start()
    try:
        settled = [server.wait_settled(name, timeout=60) for name in names]
        contract = server.registrar_address()
    finally:
        server.stop()
    confirmed = [s for s in settled if s["state"] == "confirmed"]
    bound = [
        chain_addr(node.url, contract, name) == account.jami_id
        for name, account in zip(names, accounts, strict=True)
    ]
    sent = nonce_count(node.url, Account.from_key(key).address)
    print(
        f"\nkill -9 on 1 s blocks: at the kill {at_kill}; after restart "
        f"accepted={accepted} confirmed={len(confirmed)} "
        f"failed={accepted - len(confirmed)} transactions={sent} (deploy + {sent - 1})"
    )
    assert len(confirmed) == accepted
    assert all(bound)
    # One deployment and exactly one transaction per registration: no gap, no double.
    assert sent == 1 + accepted
    assert len({s["tx"] for s in confirmed}) == accepted


def _states_at_first_confirmation(
    server: ServerProcess, names: list[str], timeout: float = 30.0
) -> list[dict[str, object]]:
    """Poll every name's registration until one of them is confirmed."""
    deadline = time.monotonic() + timeout
    while True:
        states = [server.registration(name) for name in names]
        if any(s["state"] == "confirmed" for s in states):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"none confirmed after {timeout} s: {states}")
        time.sleep(0.05)


def test_kill_9_then_node_restart_from_its_state_file_confirms_mined_registrations(
    anvil_binary: str, tmp_path: Path
) -> None:
    """The node comes back from its state file with receipts but without past states
    (what anvil --prune-history, geth's full node and any restart keep): registrations
    mined while the server was down are decided from their receipts."""
    with AnvilNode(binary=anvil_binary, state_file=tmp_path / "state.json") as node:
        key = funded_key(node)
        server = ServerProcess(data_dir=tmp_path / "server", env=_server_env(node, key))
        server.start()
        accounts = quick_accounts(3, offset=30)
        names = [unique_name("pruned") for _ in accounts]
        try:
            rpc(node.url, "evm_setAutomine", [False])
            with httpx.Client(base_url=server.url, timeout=30) as http:
                for name, account in zip(names, accounts, strict=True):
                    assert _post(http, name, account.registration_body(name)) == 200
            for name in names:
                server.wait_sent(name)
            server.kill()
        finally:
            server.stop()
        rpc(node.url, "evm_mine", [])  # ours, mined while the server is down
        rpc(node.url, "evm_mine", [])
        node.stop()  # a clean stop: the state file has receipts, not past states
        node.start()
        server.start()
        try:
            settled = [server.wait_settled(name, timeout=30) for name in names]
            with httpx.Client(base_url=server.url, timeout=30) as http:
                later = unique_name("later")
                (account,) = quick_accounts(1, offset=33)
                assert _post(http, later, account.registration_body(later)) == 200
                assert server.wait_settled(later)["state"] == "confirmed"
                assert http.get("/readyz").json()["status"] == "ready"
            contract = server.registrar_address()
        finally:
            server.stop()
        assert [s["state"] for s in settled] == ["confirmed"] * len(names)
        assert [chain_addr(node.url, contract, name) for name in names] == [
            account.jami_id for account in accounts
        ]


def test_kill_9_then_restart_of_a_geth_full_node_confirms_mined_registrations(
    geth_binary: str, tmp_path: Path
) -> None:
    """The realistic case of the test above: geth's default full node (not an archive)
    restarted keeps the head's state and the receipts, not the state of the blocks that
    mined our transactions while the server was down ("missing trie node")."""
    with GethNode(tmp_path / "geth", binary=geth_binary, archive=False) as node:
        # A slow receipt poll: the writer sends at once, and looks for receipts only
        # after the restart (the kill comes before it decides anything).
        env = _server_env(
            node, funded_key(node), JAMINS_CONFIRMATIONS="0", JAMINS_RECEIPT_POLL_SECONDS="60"
        )
        server = ServerProcess(data_dir=tmp_path / "server", env=env)
        server.start()
        accounts = quick_accounts(3, offset=34)
        names = [unique_name("fullnode") for _ in accounts]
        try:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                for name, account in zip(names, accounts, strict=True):
                    assert _post(http, name, account.registration_body(name)) == 200
            at_kill = [server.wait_sent(name)["state"] for name in names]
            server.kill()
        finally:
            server.stop()
        assert "pending" in at_kill
        node.wait_for_block(node.block_number() + 2)  # ours mined
        for _ in range(3):  # later blocks whose state differs from ours (empty ones do not)
            node.wait_receipt(node.send_from_bank({"to": "0x" + "00" * 20, "value": 1}))
        node.stop()
        node.start()
        server.env["JAMINS_RECEIPT_POLL_SECONDS"] = "0.2"
        server.start()
        try:
            settled = [server.wait_settled(name, timeout=60) for name in names]
            with httpx.Client(base_url=server.url, timeout=30) as http:
                assert http.get("/readyz").json()["checks"]["writer"] == "ok"
            contract = server.registrar_address()
        finally:
            server.stop()
        assert [s["state"] for s in settled] == ["confirmed"] * len(names)
        assert [chain_addr(node.url, contract, name) for name in names] == [
            account.jami_id for account in accounts
        ]


def test_power_loss_of_server_and_embedded_node_puts_lost_names_back(tmp_path: Path) -> None:
    data_dir = tmp_path / "embedded"
    # The embedded default (no JAMINS_RPC_URL): its own anvil, state dumped every 3 s. The
    # indexer looks once at start and then every 60 s: it never sees the lost blocks, so
    # its reorg rollback cannot help and only the writer's reconcile step can find them.
    server = ServerProcess(
        data_dir=data_dir,
        env={"JAMINS_EMBEDDED_STATE_INTERVAL": "3", "JAMINS_INDEX_POLL_SECONDS": "60"},
    )
    server.start()
    state_file = data_dir / "chain" / "state.json"
    first = [unique_name("kept") for _ in range(3)]
    last = [unique_name("lost") for _ in range(3)]
    accounts = quick_accounts(6, offset=20)
    bodies = {
        name: account.registration_body(name)
        for name, account in zip(first + last, accounts, strict=True)
    }
    try:
        assert server.process is not None
        node_pid = embedded_node_pid(server.process.pid, data_dir)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for name in first:
                assert _post(http, name, bodies[name]) == 200
            for name in first:
                assert server.wait_settled(name)["state"] == "confirmed"
            # Wait for a dump holding the first names, then register the last ones within
            # the same interval: the node will come back without them.
            dumped = state_file.stat().st_mtime if state_file.exists() else 0.0
            deadline = time.monotonic() + 10
            while (state_file.stat().st_mtime if state_file.exists() else 0.0) == dumped:
                assert time.monotonic() < deadline, "no state dump"
                time.sleep(0.02)
            dumped = state_file.stat().st_mtime
            for name in last:
                assert _post(http, name, bodies[name]) == 200
            for name in last:
                assert server.wait_settled(name)["state"] == "confirmed"
            answered = {name: http.get(f"/name/{name}").status_code for name in first + last}
            # Power loss: the node first (killing the server first would SIGTERM the node,
            # which then saves its state), the server at once after.
            sigkill(node_pid)
            server.kill()
        lost_blocks = state_file.stat().st_mtime == dumped
    finally:
        server.stop()
    assert set(answered.values()) == {200}

    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            # Every name answered 200 before the loss answers 200 at once after it.
            again = {name: http.get(f"/name/{name}").status_code for name in first + last}
            assert again == answered
            # Until the writer's first step has put the lost names back to pending, they
            # still show as confirmed: waiting for settlement before it proves nothing.
            server.wait_writer_running()
            settled = {name: server.wait_settled(name, timeout=60) for name in first + last}
            for name in first + last:
                found = http.get(f"/name/{name}").json()
                assert found["addr"] == "0x" + bodies[name]["addr"]
        assert server.process is not None
        node_url = embedded_node_url(embedded_node_pid(server.process.pid, data_dir))
        contract = server.registrar_address()
        on_chain = {name: chain_addr(node_url, contract, name) for name in first + last}
        log = server.log_tail(1_000_000)
    finally:
        server.stop()
    put_back = [line for line in log.splitlines() if "missing from the chain" in line]
    print(
        f"\npower loss: accepted={len(bodies)} lost blocks={lost_blocks} "
        f"reconciled: {put_back} confirmed="
        f"{sum(s['state'] == 'confirmed' for s in settled.values())} "
        f"failed={sum(s['state'] == 'failed' for s in settled.values())}"
    )
    assert {name: s["state"] for name, s in settled.items()} == dict.fromkeys(
        first + last, "confirmed"
    )
    assert on_chain == {name: bodies[name]["addr"] for name in first + last}
    if lost_blocks:
        # The node came back from the dump taken before the last names: the server found
        # them missing and sent them again.
        assert put_back


def test_chain_node_outage_under_load(node: AnvilNode, tmp_path: Path) -> None:
    key = funded_key(node)
    server = ServerProcess(
        data_dir=tmp_path / "server", env=_server_env(node, key, JAMINS_RPC_TIMEOUT="1")
    )
    server.start()
    accounts = AccountStream(1_000)
    known = unique_name("known")
    queued = [unique_name("queued") for _ in range(2)]
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert _post(http, known, next(accounts).registration_body(known)) == 200
            assert server.wait_settled(known)["state"] == "confirmed"

            def request(client: httpx.Client, i: int) -> tuple[str, int | str]:
                if i % 3 == 0:
                    return "known", client.get(f"/name/{known.upper()}").status_code
                if i % 3 == 1:
                    return "unknown", client.get(f"/name/{unique_name('free')}").status_code
                name = unique_name("load")
                body = next(accounts).registration_body(name)
                return "register", client.post(f"/name/{name}", json=body).status_code

            with Load(server.url, request, threads=2, max_requests=200, pause=0.1) as load:
                load.run_phase("before", 2)
                # Two registrations accepted and sent, not mined, when the node goes away.
                rpc(node.url, "evm_setAutomine", [False])
                for name in queued:
                    assert _post(http, name, next(accounts).registration_body(name)) == 200
                    server.wait_sent(name)
                load.phase = "stopping"
                node.stop()
                load.run_phase("outage", 4)
                # Answers from the node being started are not the outage's: a name the
                # restarted node says is free is a true 404 (the server's part, a node
                # answering before its state is loaded, is tests/test_service_chain.py's).
                load.phase = "recovering"
                node.start()  # same port, the saved state; automine again
                deadline = time.monotonic() + 30
                while http.get(f"/name/{unique_name('probe')}").status_code != 404:
                    assert time.monotonic() < deadline, "the server did not recover"
                    time.sleep(0.2)
                load.run_phase("after", 2)
            settled = [server.wait_settled(name, timeout=60) for name in queued]
    finally:
        server.stop()
    result = load.result
    print(
        "\nchain outage:",
        {
            f"{phase} {kind}": dict(result.statuses(phase, kind))
            for phase in ("before", "outage", "after")
            for kind in ("known", "unknown", "register")
        },
    )
    assert set(result.statuses("outage", "known")) == {200}
    assert set(result.statuses("outage", "unknown")) == {503}
    assert set(result.statuses("outage", "register")) == {503}
    for phase in ("before", "after"):
        assert set(result.statuses(phase, "known")) == {200}
        assert set(result.statuses(phase, "unknown")) == {404}
        assert set(result.statuses(phase, "register")) == {200}
    assert all(kind not in (404, 429) for (_, k, kind) in result.counts if k == "known")
    assert [s["state"] for s in settled] == ["confirmed"] * len(queued)


def test_postgresql_restart_under_load(anvil: AnvilNode, tmp_path: Path) -> None:
    postgres = PostgresServer()
    postgres.start()
    server = ServerProcess(
        data_dir=tmp_path / "server",
        env={
            **_server_env(anvil, funded_key(anvil)),
            "JAMINS_DATABASE_URL": postgres.create_database("faults"),
            # Lookups from memory would hide the outage from the known-name probes.
            "JAMINS_LOOKUP_CACHE_SECONDS": "0",
        },
    )
    accounts = AccountStream(2_000)
    try:
        server.start()
        known = unique_name("pgknown")
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert _post(http, known, next(accounts).registration_body(known)) == 200

            def request(client: httpx.Client, i: int) -> tuple[str, int | str]:
                if i % 2 == 0:
                    return "lookup", client.get(f"/name/{known}").status_code
                name = unique_name("pgload")
                body = next(accounts).registration_body(name)
                return "register", client.post(f"/name/{name}", json=body).status_code

            with Load(server.url, request, threads=2, max_requests=200, pause=0.1) as load:
                load.run_phase("before", 2)
                load.phase = "stopping"
                postgres.pause()
                load.run_phase("outage", 3)
                load.phase = "restarting"
                postgres.resume()
                deadline = time.monotonic() + 30
                while http.get(f"/name/{known}").status_code != 200:
                    assert time.monotonic() < deadline, "the server did not recover"
                    time.sleep(0.2)
                load.run_phase("after", 2)
            accepted_after = [
                name
                for name in (unique_name("pgafter") for _ in range(2))
                if _post(http, name, next(accounts).registration_body(name)) == 200
            ]
            settled = [server.wait_settled(name, timeout=60) for name in accepted_after]
    finally:
        server.stop()
        postgres.stop()
    result = load.result
    print(
        "\npostgresql restart:",
        {
            f"{phase} {kind}": dict(result.statuses(phase, kind))
            for phase in ("before", "outage", "after")
            for kind in ("lookup", "register")
        },
    )
    for kind in ("lookup", "register"):
        assert set(result.statuses("outage", kind)) == {503}, kind
        assert set(result.statuses("before", kind)) == {200}, kind
        assert set(result.statuses("after", kind)) == {200}, kind
    assert len(accepted_after) == 2
    assert [s["state"] for s in settled] == ["confirmed", "confirmed"]


def test_reorg_drops_mined_registrations_resubmitted_or_failed(
    node: AnvilNode, tmp_path: Path
) -> None:
    key = funded_key(node)
    server = ServerProcess(
        data_dir=tmp_path / "server",
        # The indexer looks every 3 s: time for another party to take a name in the fork.
        # Its gas price is below the other party's: whatever the node puts back in its pool
        # after the revert, the other party's transaction goes first in the new branch.
        env=_server_env(
            node,
            key,
            JAMINS_CONFIRMATIONS="0",
            JAMINS_INDEX_POLL_SECONDS="3",
            JAMINS_GAS_PRICE_WEI=str(10**8),
        ),
    )
    server.start()
    resubmitted, taken = unique_name("reorg"), unique_name("stolen")
    mine, thief = quick_accounts(2, offset=200)
    try:
        contract = server.registrar_address()
        snapshot = rpc(node.url, "evm_snapshot", [])
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for name, account in ((resubmitted, mine), (taken, thief)):
                assert _post(http, name, account.registration_body(name)) == 200
                assert server.wait_settled(name)["state"] == "confirmed"
            before = {name: server.registration(name) for name in (resubmitted, taken)}
            head = int(rpc(node.url, "eth_blockNumber", []), 16)
            _wait_indexed(http, head)

            assert rpc(node.url, "evm_revert", [snapshot]) is True
            other = DirectWriter(node.url, funded_key(node), contract)
            other.reserve_for([DirectRecord(taken, secrets.token_hex(20))])
            rpc(node.url, "anvil_mine", [hex(3)])  # the new branch is longer

            _wait_for_log(server, "in orphaned blocks: resubmitting")
            after = {name: server.wait_settled(name, timeout=60) for name in before}
            looked_up = {name: http.get(f"/name/{name}").json() for name in before}
    finally:
        server.stop()
    on_chain = {name: chain_addr(node.url, contract, name) for name in before}
    print(
        f"\nreorg: before {[(n, s['state'], s['block']) for n, s in before.items()]}; "
        f"after {[(n, s['state'], s['block'], s['reason']) for n, s in after.items()]}"
    )
    # Re-submitted: confirmed again on the new branch, with the same transaction.
    assert after[resubmitted]["state"] == "confirmed"
    assert after[resubmitted]["tx"] == before[resubmitted]["tx"]
    receipt = rpc(node.url, "eth_getTransactionReceipt", [after[resubmitted]["tx"]])
    assert int(receipt["blockNumber"], 16) == after[resubmitted]["block"]
    assert on_chain[resubmitted] == mine.jami_id
    assert looked_up[resubmitted]["addr"] == "0x" + mine.jami_id
    # Taken by another party on the new branch: failed, and lookups say whose it is.
    assert after[taken]["state"] == "failed"
    assert on_chain[taken] == other_id(looked_up[taken])
    assert on_chain[taken] != thief.jami_id
    # Every registration ends in one state the chain agrees with: two transactions sent.
    assert nonce_count(node.url, Account.from_key(key).address) == 1 + 2


class AccountStream:
    """Fresh accounts for load threads: next() is safe from several threads."""

    def __init__(self, offset: int) -> None:
        self.indexes = itertools.count(offset)

    def __iter__(self) -> AccountStream:
        return self

    def __next__(self) -> JamiAccount:
        return quick_account(next(self.indexes))


def other_id(answer: dict[str, str]) -> str:
    return answer["addr"].removeprefix("0x")


def _wait_indexed(http: httpx.Client, block: int, timeout: float = 30) -> None:
    """Until the indexer has indexed `block` (and remembered its hash)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = http.get("/metrics").text.splitlines()
        indexed = [
            float(line.split()[-1]) for line in lines if line.startswith("jamins_indexer_block ")
        ]
        if indexed and indexed[0] >= block:
            return
        assert time.monotonic() < deadline, indexed
        time.sleep(0.2)


def _wait_for_log(server: ServerProcess, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log_tail(1_000_000):
        assert time.monotonic() < deadline, f"{text!r} not logged"
        time.sleep(0.1)
