"""Two servers on one PostgreSQL database and one chain node: both serve and accept
registrations, exactly one writes transactions, and the other takes over when the writer
dies. Every accepted registration ends confirmed exactly once.

The writer that dies is a real `jamins serve` (kill -9); the one that takes over is the
same application in this process (InProcessApp): two writers, two connection pools, two
leader locks on one database all the same, without a second interpreter's start-up.
`--workers 2` is a real process of course."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from eth_account import Account

from app.chain.anvil import rpc
from app.settings import Settings
from tests.conftest import ChainNode, funded_key, own_chain_node, unique_name
from tests.jami_keys import account_pool
from tests.pg import PostgresServer
from tests.server import InProcessApp, ServerProcess, wait_settled_through

pytestmark = pytest.mark.slow


@pytest.fixture
def ticking_node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChainNode]:
    """A node that seals a block every second: anvil (default), or the session's geth
    (Clique, period 1: it ticks already) for tests parametrized indirectly with "geth"."""
    kind = getattr(request, "param", "anvil")
    if kind == "geth":
        yield request.getfixturevalue("geth")
        return
    with own_chain_node(kind, request, tmp_path / "geth", block_time=1) as node:
        yield node


def register_all(http: httpx.Client, work: list[tuple[str, dict[str, str]]]) -> list[int]:
    def post(item: tuple[str, dict[str, str]]) -> int:
        name, body = item
        return http.post(f"/name/{name}", json=body, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(post, work))


@pytest.mark.parametrize("ticking_node", ["anvil", "geth"], indirect=True)
def test_two_servers_share_one_writer_and_take_over(
    ticking_node: ChainNode, postgres: PostgresServer, tmp_path: Path
) -> None:
    key = funded_key(ticking_node)
    env = {
        "JAMINS_RPC_URL": ticking_node.url,
        "JAMINS_CHAIN_ID": str(ticking_node.chain_id),
        "JAMINS_SIGNER_KEY": key,
        "JAMINS_DATABASE_URL": postgres.create_database(f"two_{secrets.token_hex(4)}"),
        "JAMINS_LEADER_POLL_SECONDS": "0.5",
        "JAMINS_RECEIPT_POLL_SECONDS": "0.3",
        # One deployment (one signer, one registrar) on a private node: pending names are
        # answered at once (README, "What lookups answer while a registration is pending").
        "JAMINS_REGISTRAR_EXCLUSIVE": "true",
    }
    first = ServerProcess(data_dir=tmp_path / "a", env={**env, "JAMINS_DEPLOY": "true"})
    first.start()
    second = InProcessApp(
        Settings(
            _env_file=None,
            data_dir=tmp_path / "b",
            rpc_url=ticking_node.url,
            chain_id=ticking_node.chain_id,
            signer_key=key,
            database_url=env["JAMINS_DATABASE_URL"],
            leader_poll_seconds=0.5,
            receipt_poll_seconds=0.3,
            registrar_exclusive=True,
            confirmations=0,
            register_rate_per_minute=0,
        )
    )
    try:
        second.start()
        with (
            httpx.Client(base_url=first.url, timeout=30) as to_first,
            second.client() as to_second,
        ):
            assert first.registrar_address() == to_second.get("/healthz").json()["registrar"]
            accounts = account_pool(18)
            names = [unique_name("two") for _ in accounts]
            work: list[tuple[str, dict[str, str]]] = [
                (name, account.registration_body(name))
                for name, account in zip(names, accounts, strict=True)
            ]
            # Both accept; the first (the leader, it started first) sends everything.
            with ThreadPoolExecutor(max_workers=2) as both:
                through_first = both.submit(register_all, to_first, work[:6])
                through_second = both.submit(register_all, to_second, work[6:12])
                assert through_first.result() + through_second.result() == [200] * 12
            # Each server sees the other's registrations at once (one database), even a
            # name it has just answered "free" for.
            assert to_first.get(f"/name/{names[8]}").status_code == 200
            assert to_second.get(f"/name/{names[2]}").status_code == 200
            late, late_account = unique_name("late"), account_pool(19)[-1]
            assert to_second.get(f"/name/{late}").status_code == 404
            assert to_second.get(f"/name/{late}").status_code == 404
            body = late_account.registration_body(late)
            assert to_first.post(f"/name/{late}", json=body).status_code == 200
            assert to_second.get(f"/name/{late}").status_code == 200
            names.append(late)
            accounts.append(late_account)

            first.kill()  # the writer dies, some transactions surely in flight

            assert register_all(to_second, work[12:]) == [200] * 6
            states = [wait_settled_through(to_second, name, timeout=60) for name in names]
            assert [state["state"] for state in states] == ["confirmed"] * len(names)
            for name, account in zip(names, accounts, strict=True):
                found = to_second.get(f"/name/{name}").json()
                assert found["addr"] == "0x" + account.jami_id
    finally:
        first.stop()
        second.stop()
    # One deployment and one transaction per name: no nonce collision, nothing twice.
    sender = Account.from_key(key).address
    sent = int(rpc(ticking_node.url, "eth_getTransactionCount", [sender, "latest"]), 16)
    assert sent == 1 + len(names)


def test_workers_answer_alike_on_postgresql(
    ticking_node: ChainNode, postgres: PostgresServer, tmp_path: Path
) -> None:
    """`--workers 2`: whichever worker answers, a name accepted by the other is taken."""
    server = ServerProcess(
        data_dir=tmp_path,
        env={
            "JAMINS_RPC_URL": ticking_node.url,
            "JAMINS_CHAIN_ID": str(ticking_node.chain_id),
            "JAMINS_SIGNER_KEY": funded_key(ticking_node),
            "JAMINS_DEPLOY": "true",
            "JAMINS_DATABASE_URL": postgres.create_database(f"w_{secrets.token_hex(4)}"),
            "JAMINS_WORKERS": "2",
            "JAMINS_REGISTRAR_EXCLUSIVE": "true",
        },
    )
    server.start()
    try:
        account, name = account_pool(20)[-1], unique_name("workers")
        # A new connection per request, so that both workers answer.
        no_keepalive = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=server.url, limits=no_keepalive, timeout=30) as http:
            # Both workers answer and remember "free".
            for _ in range(6):
                assert http.get(f"/name/{name}").status_code == 404
            assert http.post(f"/name/{name}", json=account.registration_body(name)).json() == {
                "success": True
            }
            answers = [http.get(f"/name/{name}").status_code for _ in range(10)]
        assert answers == [200] * 10
        assert server.wait_settled(name)["state"] == "confirmed"
    finally:
        server.stop()
