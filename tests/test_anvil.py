"""The local anvil node manager (app/chain/anvil.py) against the real anvil binary."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from app.chain.anvil import (
    AnvilNode,
    AnvilNotFound,
    AnvilStartError,
    find_anvil,
    fund,
    rpc,
)
from tests.server import REPO_ROOT, is_running, wait_gone

DEV_ACCOUNT = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"  # anvil's first dev account
# Init code: SSTORE(0, 0x2a), then return the 1-byte runtime code 0x00 (STOP).
INIT_CODE = "0x602a600055" + "6001601160003960016000f3" + "00"


@pytest.fixture
def node(anvil: AnvilNode) -> AnvilNode:
    """The session's node (an AnvilNode like any): tests that stop, kill or restart a node
    start their own."""
    return anvil


def _deploy(url: str) -> tuple[str, str]:
    """Deploy INIT_CODE from the unlocked dev account; return (tx hash, contract address)."""
    tx_hash = rpc(
        url,
        "eth_sendTransaction",
        [{"from": DEV_ACCOUNT, "data": INIT_CODE, "gasPrice": hex(10**9)}],
    )
    # Automine answers before the block is stored: poll for the receipt.
    deadline = time.monotonic() + 10.0
    while (receipt := rpc(url, "eth_getTransactionReceipt", [tx_hash])) is None:
        assert time.monotonic() < deadline, f"{tx_hash} was not mined"
        time.sleep(0.02)
    assert receipt["status"] == "0x1"
    return tx_hash, receipt["contractAddress"]


def test_find_anvil_locates_npm_binary() -> None:
    assert Path(find_anvil()).name == "anvil"


def test_find_anvil_missing_explicit_raises(tmp_path: Path) -> None:
    with pytest.raises(AnvilNotFound, match="does not exist"):
        find_anvil(str(tmp_path / "no-such-anvil"))


def test_start_answers_chain_id(node: AnvilNode) -> None:
    assert node.url.startswith("http://127.0.0.1:")
    assert int(rpc(node.url, "eth_chainId"), 16) == 1551
    block = rpc(node.url, "eth_getBlockByNumber", ["latest", False])
    assert int(block["gasLimit"], 16) == 4_700_000


def test_start_non_local_host_refused(anvil_binary: str) -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        AnvilNode(binary=anvil_binary, host="0.0.0.0")


def test_start_busy_port_raises_with_log_tail(anvil_binary: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        node = AnvilNode(binary=anvil_binary, port=busy.getsockname()[1])
        with pytest.raises(AnvilStartError, match="Address already in use"):
            node.start()
    assert node.pid is None


def test_stop_leaves_no_process(anvil_binary: str) -> None:
    node = AnvilNode(binary=anvil_binary)
    node.start()
    pid = node.pid
    assert pid is not None and is_running(pid)
    node.stop()
    assert node.pid is None
    assert not is_running(pid)
    node.stop()  # idempotent


def test_kill_leaves_no_process_and_no_state(anvil_binary: str, tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    node = AnvilNode(binary=anvil_binary, state_file=state_file)
    node.start()
    pid = node.pid
    assert pid is not None
    rpc(node.url, "evm_mine")
    node.kill()
    assert node.pid is None
    assert not is_running(pid)
    assert not state_file.exists()
    node.kill()  # idempotent


def test_fund_sets_balance(node: AnvilNode) -> None:
    address = "0x1111111111111111111111111111111111111111"
    fund(node.url, address, 10**18 + 7)
    assert int(rpc(node.url, "eth_getBalance", [address, "latest"]), 16) == 10**18 + 7


def test_restart_keeps_state(anvil_binary: str, tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    funded = "0x2222222222222222222222222222222222222222"
    with AnvilNode(binary=anvil_binary, state_file=state_file) as first:
        fund(first.url, funded, 12345)
        tx_hash, contract = _deploy(first.url)
        for _ in range(3):
            rpc(first.url, "evm_mine")
        block_number = int(rpc(first.url, "eth_blockNumber"), 16)
        latest_hash = rpc(first.url, "eth_getBlockByNumber", ["latest", False])["hash"]
    assert state_file.exists()

    with AnvilNode(binary=anvil_binary, state_file=state_file) as second:
        url = second.url
        assert int(rpc(url, "eth_blockNumber"), 16) == block_number
        assert rpc(url, "eth_getBlockByNumber", ["latest", False])["hash"] == latest_hash
        assert int(rpc(url, "eth_getBalance", [funded, "latest"]), 16) == 12345
        assert rpc(url, "eth_getCode", [contract, "latest"]) == "0x00"
        assert int(rpc(url, "eth_getStorageAt", [contract, "0x0", "latest"]), 16) == 0x2A
        # Mined transactions stay readable: an indexer can resume from its last block.
        assert rpc(url, "eth_getTransactionReceipt", [tx_hash])["contractAddress"] == contract
        rpc(url, "evm_mine")
        assert int(rpc(url, "eth_blockNumber"), 16) == block_number + 1


def test_parent_death_stops_anvil(anvil_binary: str) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from app.chain.anvil import AnvilNode
        node = AnvilNode(binary={anvil_binary!r})
        node.start()
        print(node.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        anvil_pid = int(parent.stdout.readline())
        assert is_running(anvil_pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        parent.stdout.close()  # type: ignore[union-attr]
    assert wait_gone(anvil_pid), f"anvil pid {anvil_pid} outlived its parent"


def test_restart_keeps_historical_reads_when_preserved(anvil_binary: str, tmp_path: Path) -> None:
    # (That anvil without the flag refuses them is anvil's behaviour, not ours to test.)
    state_file = tmp_path / "state.json"
    node = AnvilNode(binary=anvil_binary, state_file=state_file, preserve_historical_states=True)
    with node:
        _, contract = _deploy(node.url)
        deploy_block = rpc(node.url, "eth_blockNumber")
        rpc(node.url, "evm_mine")
    with node:
        read = [contract, "0x0", deploy_block]
        assert int(rpc(node.url, "eth_getStorageAt", read), 16) == 0x2A
