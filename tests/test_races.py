"""Races: many clients at once for one name, and one client for many names. Exactly one
wins, every other answer is the PROTOCOL.md §4 refusal, and the chain agrees. On SQLite
and PostgreSQL (the `server` fixture)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from app.chain.anvil import AnvilNode, rpc
from tests.conftest import funded_key, unique_name
from tests.faults import chain_addr, quick_accounts
from tests.server import ServerProcess
from tests.test_api import DirectWriter as RivalWriter

CONTENDERS = 50
ZERO = "0" * 40


def _race(server: ServerProcess, requests: list[tuple[str, dict[str, str]]]) -> list[int]:
    """POST every (name, body) at the same moment, one thread each; the statuses."""
    start = threading.Barrier(len(requests))
    limits = httpx.Limits(max_connections=len(requests))
    with httpx.Client(base_url=server.url, timeout=60, limits=limits) as client:

        def post(request: tuple[str, dict[str, str]]) -> int:
            name, body = request
            start.wait(30)
            return client.post(f"/name/{name}", json=body).status_code

        with ThreadPoolExecutor(len(requests)) as pool:
            return list(pool.map(post, requests))


@pytest.mark.slow
def test_one_name_from_50_ids_has_one_winner(
    server: ServerProcess, http: httpx.Client, anvil: AnvilNode
) -> None:
    name = unique_name("race")
    accounts = quick_accounts(CONTENDERS, offset=300)
    statuses = _race(server, [(name, account.registration_body(name)) for account in accounts])
    assert Counter(statuses) == {200: 1, 409: CONTENDERS - 1}
    winner = accounts[statuses.index(200)]
    assert server.wait_settled(name)["state"] == "confirmed"
    assert chain_addr(anvil.url, server.registrar_address(), name) == winner.jami_id
    assert http.get(f"/name/{name}").json()["addr"] == "0x" + winner.jami_id
    losers = [account for account in accounts if account is not winner]
    assert {http.get(f"/addr/{account.jami_id}").status_code for account in losers[:5]} == {404}


@pytest.mark.slow
def test_50_names_for_one_id_has_one_winner(
    server: ServerProcess, http: httpx.Client, anvil: AnvilNode
) -> None:
    (account,) = quick_accounts(1, offset=350)
    names = [unique_name("many") for _ in range(CONTENDERS)]
    statuses = _race(server, [(name, account.registration_body(name)) for name in names])
    counts = Counter(statuses)
    assert counts[200] == 1, counts
    # The address already has a name: 403 (PROTOCOL.md §4); both read as "taken".
    assert set(counts) - {200} <= {403, 409}, counts
    winner = names[statuses.index(200)]
    assert server.wait_settled(winner)["state"] == "confirmed"
    contract = server.registrar_address()
    assert chain_addr(anvil.url, contract, winner) == account.jami_id
    assert {chain_addr(anvil.url, contract, name) for name in names if name != winner} == {ZERO}
    assert http.get(f"/addr/{account.jami_id}").json() == {"name": winner}


def test_identical_registrations_at_once_all_get_200(
    server: ServerProcess, http: httpx.Client, anvil: AnvilNode
) -> None:
    """A retrying client's copies (same name, same ID) arriving together: every copy is
    the same accepted registration, never "address already has a name"."""
    (account,) = quick_accounts(1, offset=360)
    name = unique_name("twin")
    body = account.registration_body(name)
    statuses = _race(server, [(name, body)] * 30)
    assert Counter(statuses) == {200: 30}
    assert server.wait_settled(name)["state"] == "confirmed"
    assert chain_addr(anvil.url, server.registrar_address(), name) == account.jami_id


@pytest.fixture
def own_node(anvil_binary: str) -> Iterator[AnvilNode]:
    with AnvilNode(binary=anvil_binary) as node:
        yield node


def test_lookup_while_pending_on_a_shared_registrar_is_never_contradicted(
    own_node: AnvilNode, tmp_path: Path
) -> None:
    """Issue 14 case 4: a funded account's reserveFor of the same name lands first in
    our block. Lookups before the outcome answer 503 (the default off the embedded node),
    never the client's ID; afterwards, the chain's truth."""
    server = ServerProcess(
        data_dir=tmp_path / "server",
        env={
            "JAMINS_RPC_URL": own_node.url,
            "JAMINS_DEPLOY": "true",
            "JAMINS_SIGNER_KEY": funded_key(own_node),
            "JAMINS_RECEIPT_POLL_SECONDS": "0.2",
            "JAMINS_CONFIRMATIONS": "0",
        },
    )
    server.start()
    (account,) = quick_accounts(1, offset=361)
    name, rival_id = unique_name("contested"), "ab" * 20
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            rival = RivalWriter(own_node, server.registrar_address())
            rpc(own_node.url, "evm_setAutomine", [False])
            try:
                assert http.post(f"/name/{name}", json=account.registration_body(name)).json()[
                    "success"
                ]
                server.wait_sent(name)
                rival.reserve_for(name, rival_id, gas_price=50 * 10**9, wait=False)  # first
                seen = [
                    http.get(path)
                    for path in (f"/name/{name}", f"/addr/{account.jami_id}", f"/name/{name}")
                ]
                rpc(own_node.url, "evm_mine", [])
            finally:
                rpc(own_node.url, "evm_setAutomine", [True])
            assert [answer.status_code for answer in seen] == [503, 503, 503]
            assert seen[0].json() == {"error": "registration pending on chain"}
            assert int(seen[0].headers["retry-after"]) > 0
            assert server.wait_settled(name)["state"] == "failed"
            assert http.get(f"/name/{name}").json()["addr"] == "0x" + rival_id
            assert http.get(f"/addr/{account.jami_id}").status_code == 404
    finally:
        server.stop()
