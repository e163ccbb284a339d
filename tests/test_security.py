"""Hostile registrations over HTTP, the admission limits, and the signer key's secrecy.

What test_api.py already covers (a key of another account, a signature over another
name, malformed bodies) is not repeated; test_proofs.py has the full table of keys."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from eth_account import Account
from eth_utils.crypto import keccak

from app.chain.anvil import AnvilNode, rpc
from app.names import to_bytes32
from tests.chain_tools import DirectWriter
from tests.conftest import funded_key, unique_name
from tests.faults import chain_addr, quick_accounts
from tests.jami_keys import JamiAccount
from tests.server import ServerProcess


def _pem(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _jami_id(key: PublicKeyTypes) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha1(der).hexdigest()


def _body_with_key(
    account: JamiAccount, name: str, key: PublicKeyTypes, pem: bytes
) -> dict[str, str]:
    """The account's signature over `name`, with another key whose ID is `addr`."""
    return {
        "addr": _jami_id(key),
        "owner": "0" * 40,
        "signature": account.sign(name),
        "publickey": base64.b64encode(pem).decode(),
    }


def _pem_with_garbage(account: JamiAccount, name: str) -> dict[str, str]:
    body = account.registration_body(name)
    pem = base64.b64decode(body["publickey"]).rstrip(b"\0")
    body["publickey"] = base64.b64encode(pem + b"\nAAAA garbage\n").decode()
    return body


def _huge_key(account: JamiAccount, name: str) -> dict[str, str]:
    # An RSA-16384 modulus (not a real key: no primes needed to be refused for its size).
    modulus = (1 << 16383) | secrets.randbits(16383) | 1
    key = rsa.RSAPublicNumbers(65537, modulus).public_key()
    return _body_with_key(account, name, key, _pem(key))


def _ec_key(account: JamiAccount, name: str) -> dict[str, str]:
    private = ec.generate_private_key(ec.SECP256R1())
    key = private.public_key()
    body = _body_with_key(account, name, key, _pem(key))
    signature = private.sign(name.encode(), ec.ECDSA(hashes.SHA512()))
    body["signature"] = base64.b64encode(signature).decode()
    return body


def _signed_by_another_key(account: JamiAccount, name: str) -> dict[str, str]:
    # The account's key and ID, with a valid signature over the name by someone else.
    body = account.registration_body(name)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = other.sign(name.encode(), padding.PKCS1v15(), hashes.SHA512())
    body["signature"] = base64.b64encode(forged).decode()
    return body


def _signature_over_name_with_prefix(account: JamiAccount, name: str) -> dict[str, str]:
    body = account.registration_body(name)
    body["signature"] = account.sign(name + "x")
    return body


@pytest.mark.parametrize(
    ("make_body", "status"),
    [
        pytest.param(_pem_with_garbage, 400, id="pem-garbage-after"),
        pytest.param(_huge_key, 400, id="rsa-16384-key"),
        pytest.param(_ec_key, 400, id="ec-key"),
        pytest.param(_signed_by_another_key, 401, id="signature-by-another-key"),
        pytest.param(_signature_over_name_with_prefix, 401, id="signature-over-longer-name"),
    ],
)
def test_register_hostile_body_is_refused(
    http: httpx.Client, make_body: Callable[[JamiAccount, str], dict[str, str]], status: int
) -> None:
    (account,) = quick_accounts(1, offset=400)
    name = unique_name("hostile")
    answer = http.post(f"/name/{name}", json=make_body(account, name))
    assert answer.status_code == status, answer.text
    assert answer.json()["success"] is False
    assert http.get(f"/name/{name}").status_code == 404
    assert http.get(f"/addr/{account.jami_id}").status_code == 404


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


@pytest.fixture
def own_node(anvil_binary: str) -> Iterator[AnvilNode]:
    with AnvilNode(binary=anvil_binary) as node:
        yield node


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
    own_node: AnvilNode, tmp_path: Path
) -> None:
    server = _admission_server(
        own_node, tmp_path, JAMINS_REGISTER_RATE_PER_MINUTE="1", JAMINS_REGISTER_BURST="2"
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
    own_node: AnvilNode, tmp_path: Path
) -> None:
    server = _admission_server(own_node, tmp_path, JAMINS_MAX_PENDING="2")
    server.start()
    accounts = quick_accounts(4, offset=420)
    names = [unique_name("queue") for _ in accounts]
    bodies = [
        account.registration_body(name) for name, account in zip(names, accounts, strict=True)
    ]
    rpc(own_node.url, "evm_setAutomine", [False])  # nothing is mined: the queue fills
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.post(f"/name/{names[0]}", json=bodies[0]).status_code == 200
            assert http.post(f"/name/{names[1]}", json=bodies[1]).status_code == 200
            full = http.post(f"/name/{names[2]}", json=bodies[2])
            assert full.status_code == 503
            assert full.json()["error"] == "too many registrations waiting for the chain"
            assert int(full.headers["retry-after"]) > 0
            rpc(own_node.url, "evm_setAutomine", [True])
            rpc(own_node.url, "evm_mine", [])
            for name in names[:2]:
                assert server.wait_settled(name)["state"] == "confirmed"
            assert http.post(f"/name/{names[2]}", json=bodies[2]).status_code == 200
            assert server.wait_settled(names[2])["state"] == "confirmed"
    finally:
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
