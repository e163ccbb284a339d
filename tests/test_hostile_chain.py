"""The embedded node holds no funded account but the signer's, and a server whose chain is
reset under it (anvil_reset by any local process) stops saying it is ready and answers
registrations 503 instead of accepting them into a queue that can never be mined."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.chain.anvil import AnvilNode, rpc
from app.chain.client import ChainClient
from app.workers.chain_watch import ChainWatch
from tests.conftest import unique_name
from tests.jami_keys import make_account
from tests.server import ServerProcess


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(data_dir=tmp_path, env={"JAMINS_CHAIN_WATCH_SECONDS": "0.3"})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def node_url(server: ServerProcess) -> str:
    found = re.search(r"embedded chain node at (http://127\.0\.0\.1:\d+)", server.log_tail(10**6))
    assert found, server.log_tail()
    return found.group(1)


def test_embedded_node_funds_only_the_signer(embedded: ServerProcess) -> None:
    url = node_url(embedded)
    assert rpc(url, "eth_accounts") == []
    name = unique_name("funded")
    answer = httpx.post(f"{embedded.url}/name/{name}", json=make_account().registration_body(name))
    assert answer.status_code == 200
    assert embedded.wait_settled(name)["state"] == "confirmed"


def test_reset_chain_is_not_ready_and_registrations_answer_503(embedded: ServerProcess) -> None:
    url = node_url(embedded)
    assert httpx.get(f"{embedded.url}/readyz", timeout=10).status_code == 200
    rpc(url, "anvil_reset", [])
    deadline = time.monotonic() + 10
    while True:
        ready = httpx.get(f"{embedded.url}/readyz", timeout=10)
        if ready.status_code == 503 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ready.status_code == 503, ready.json()
    assert "registrar" in ready.json()["checks"]["chain"], ready.json()
    name = unique_name("reset")
    answer = httpx.post(f"{embedded.url}/name/{name}", json=make_account().registration_body(name))
    assert answer.status_code == 503
    assert answer.headers["retry-after"]
    assert answer.json()["success"] is False


def test_chain_watch_notices_a_chain_that_went_backwards(anvil_binary: str) -> None:
    registrar = "0x" + "12" * 20
    changes: list[str | None] = []

    async def go() -> list[str | None]:
        with AnvilNode(binary=anvil_binary, accounts=0) as node:
            rpc(node.url, "anvil_setCode", [registrar, "0x6000"])
            client = ChainClient(node.url, timeout=5)
            watch = ChainWatch(
                client=client, registrar_address=registrar, interval=1, on_change=changes.append
            )
            try:
                seen = [await watch.check()]
                snapshot = rpc(node.url, "evm_snapshot")
                for _ in range(3):
                    rpc(node.url, "evm_mine")
                seen.append(await watch.check())
                rpc(node.url, "evm_revert", [snapshot])
                seen.append(await watch.check())
                for _ in range(3):
                    rpc(node.url, "evm_mine")
                seen.append(await watch.check())
                rpc(node.url, "anvil_setCode", [registrar, "0x"])
                seen.append(await watch.check())
                return seen
            finally:
                await client.close()

    seen = asyncio.run(go())
    assert seen[:2] == [None, None]
    assert seen[2] is not None and "went backwards from block 3 to 0" in seen[2]
    assert seen[3] is None  # the chain is back past where it was
    assert seen[4] is not None and "registrar" in seen[4]
    assert changes == [seen[2], None, seen[4]]
