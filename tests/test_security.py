"""Hostile registrations over HTTP, the admission limits, and the signer key's secrecy.

The table of hostile and malformed bodies is test_routes.py's (in process); test_proofs.py
has the full table of keys."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_utils.crypto import keccak

from app.chain.anvil import AnvilNode, rpc
from app.names import to_bytes32
from tests.chain_tools import DirectWriter
from tests.conftest import funded_key, unique_name
from tests.faults import chain_addr, quick_accounts
from tests.server import ServerProcess


def test_register_replayed_body_of_a_registered_name_under_another_name_is_401(
    server: ServerProcess, http: httpx.Client
) -> None:
    (account,) = quick_accounts(1, offset=401)
    name, replayed = unique_name("signed"), unique_name("replayed")
    body = account.registration_body(name)
    assert http.post(f"/name/{name}", json=body).status_code == 200
    answer = http.post(f"/name/{replayed}", json=body)
    assert answer.status_code == 401
    assert http.get(f"/name/{replayed}").status_code == 404
    assert http.get(f"/addr/{account.jami_id}").json() == {"name": name}


def test_signer_key_never_in_logs_or_answers(server: ServerProcess, http: httpx.Client) -> None:
    key = server.env["JAMINS_SIGNER_KEY"].removeprefix("0x").lower()
    (account,) = quick_accounts(1, offset=402)
    name = unique_name("secret")
    answers = [
        http.post(f"/name/{name}", json=account.registration_body(name)),
        http.post(f"/name/{name}x", json={"addr": key, "publickey": key, "signature": key}),
        http.post(f"/name/{key[:32]}", content=key),
        *(http.get(path) for path in ("/healthz", "/readyz", "/metrics", "/openapi.json")),
        http.get(f"/registrations/{name}"),
        http.get(f"/addr/{key[:40]}"),
    ]
    server.wait_settled(name)
    for answer in answers:
        assert key not in answer.text.lower(), answer.request.url
    # Requests above carried pieces of the key in bodies (never logged) and in a path:
    # the log may show that path's 32 characters, never the whole key.
    log = server.log_tail(10_000_000).lower()
    assert "accepted" in log  # the log is there
    assert key not in log


# -- admission control -------------------------------------------------------------------


def _admission_server(node: AnvilNode, tmp_path: Path, **settings: str) -> ServerProcess:
    return ServerProcess(
        data_dir=tmp_path / "server",
        env={
            "JAMINS_RPC_URL": node.url,
            "JAMINS_DEPLOY": "true",
            "JAMINS_SIGNER_KEY": funded_key(node),
            "JAMINS_RECEIPT_POLL_SECONDS": "0.2",
            **settings,
        },
    )


def test_register_rate_limit_per_client_is_503_with_retry_after(
    anvil: AnvilNode, tmp_path: Path
) -> None:
    server = _admission_server(
        anvil, tmp_path, JAMINS_REGISTER_RATE_PER_MINUTE="1", JAMINS_REGISTER_BURST="2"
    )
    server.start()
    accounts = quick_accounts(4, offset=410)
    names = [unique_name("rate") for _ in accounts]
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            statuses = [
                http.post(f"/name/{name}", json=account.registration_body(name))
                for name, account in zip(names, accounts, strict=True)
            ]
            assert [answer.status_code for answer in statuses] == [200, 200, 503, 503]
            throttled = statuses[2]
            assert throttled.json() == {
                "success": False,
                "error": "too many registrations from this client",
            }
            assert 1 <= int(throttled.headers["retry-after"]) <= 60
            # Retrying an accepted registration, and a 409, cost nothing and still answer.
            again = http.post(f"/name/{names[0]}", json=accounts[0].registration_body(names[0]))
            assert again.status_code == 200
            taken = http.post(f"/name/{names[0]}", json=accounts[3].registration_body(names[0]))
            assert taken.status_code == 409
            # Lookups are never limited; the throttled name is still free (404, not taken).
            assert http.get(f"/name/{names[2]}").status_code == 404
    finally:
        server.stop()


def test_register_pending_queue_bound_is_503_with_retry_after(
    anvil: AnvilNode, tmp_path: Path
) -> None:
    server = _admission_server(anvil, tmp_path, JAMINS_MAX_PENDING="2")
    server.start()
    accounts = quick_accounts(4, offset=420)
    names = [unique_name("queue") for _ in accounts]
    bodies = [
        account.registration_body(name) for name, account in zip(names, accounts, strict=True)
    ]
    rpc(anvil.url, "evm_setAutomine", [False])  # nothing is mined: the queue fills
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.post(f"/name/{names[0]}", json=bodies[0]).status_code == 200
            assert http.post(f"/name/{names[1]}", json=bodies[1]).status_code == 200
            full = http.post(f"/name/{names[2]}", json=bodies[2])
            assert full.status_code == 503
            assert full.json()["error"] == "too many registrations waiting for the chain"
            assert int(full.headers["retry-after"]) > 0
            rpc(anvil.url, "evm_setAutomine", [True])  # the session's node: as it was
            rpc(anvil.url, "evm_mine", [])
            for name in names[:2]:
                assert server.wait_settled(name)["state"] == "confirmed"
            assert http.post(f"/name/{names[2]}", json=bodies[2]).status_code == 200
            assert server.wait_settled(names[2])["state"] == "confirmed"
    finally:
        rpc(anvil.url, "evm_setAutomine", [True])
        server.stop()


# -- who controls a name on chain ----------------------------------------------------------


def _chain_owner(node: AnvilNode, contract: str, name: str) -> str:
    data = "0x" + (keccak(text="owner(bytes32)")[:4] + to_bytes32(name)).hex()
    result: str = rpc(node.url, "eth_call", [{"to": contract, "data": data}, "latest"])
    return result[-40:]


def test_register_replayed_proof_with_attacker_owner_gives_no_control(
    server: ServerProcess, http: httpx.Client, anvil: AnvilNode
) -> None:
    """A funded attacker replays a victim's public proof naming itself as owner, then
    tries to disown the name on the contract: the name stays the victim's."""
    (victim,) = quick_accounts(1, offset=430)
    name = unique_name("victim")
    attacker = DirectWriter(anvil.url, funded_key(anvil), server.registrar_address())
    body = victim.registration_body(name, owner=attacker.address)
    assert http.post(f"/name/{name}", json=body).status_code == 200
    assert server.wait_settled(name)["state"] == "confirmed"
    signer = Account.from_key(server.env["JAMINS_SIGNER_KEY"]).address.lower()[2:]
    assert _chain_owner(anvil, server.registrar_address(), name) == signer
    assert http.get(f"/name/{name}/owner").json()["owner"] == "0x" + signer
    with pytest.raises(RuntimeError, match="reverted"):
        attacker.disown(name)
    assert http.get(f"/name/{name}").json()["addr"] == "0x" + victim.jami_id
    assert http.get(f"/addr/{victim.jami_id}").json() == {"name": name}
    assert chain_addr(anvil.url, server.registrar_address(), name) == victim.jami_id


def test_register_zero_owner_never_writes_a_zero_owner(
    server: ServerProcess, http: httpx.Client, anvil: AnvilNode
) -> None:
    (account,) = quick_accounts(1, offset=431)
    name = unique_name("zeroowner")
    body = account.registration_body(name, owner="0x" + "0" * 40)
    assert http.post(f"/name/{name}", json=body).status_code == 200
    assert server.wait_settled(name)["state"] == "confirmed"
    assert _chain_owner(anvil, server.registrar_address(), name) != "0" * 40
