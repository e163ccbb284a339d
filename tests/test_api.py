"""The JamiNS protocol over real HTTP: a jamins process, a real anvil node with the real
contract, and SQLite or PostgreSQL (every test here runs on both)."""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

import httpx
import pytest
from eth_account import Account
from web3 import Web3

from app.chain.anvil import AnvilNode, rpc
from app.chain.registrar import artifact
from app.names import to_bytes32
from tests.chain_tools import DirectRecord
from tests.chain_tools import DirectWriter as ChainWriter
from tests.conftest import AccountSupply, ChainNode, funded_key, unique_name
from tests.jami_keys import CAPTURED_BODY, CAPTURED_NAME
from tests.server import ServerProcess

JSON = "application/json"


def register(http: httpx.Client, name: str, body: Any) -> httpx.Response:
    """POST as jamid does: raw JSON bytes, Content-Type: application/json."""
    content = body if isinstance(body, bytes | str) else json.dumps(body)
    return http.post(f"/name/{name}", content=content, headers={"Content-Type": JSON})


class DirectWriter:
    """Another party writing the registrar directly, not through our server."""

    def __init__(self, node: ChainNode, contract_address: str) -> None:
        self.w3 = Web3(Web3.HTTPProvider(node.url))
        self.chain_id = node.chain_id
        self.key = funded_key(node)
        self.account = self.w3.eth.account.from_key(self.key)
        self.contract = self.w3.eth.contract(
            address=Web3.to_checksum_address(contract_address), abi=artifact()["abi"]
        )

    def reserve_for(
        self, name: str, jami_id: str, *, gas_price: int = 2 * 10**9, wait: bool = True
    ) -> str:
        """Send reserveFor; with `wait`, return once it is mined (geth seals on its clock)."""
        call = self.contract.functions.reserveFor(
            to_bytes32(name),
            self.account.address,
            Web3.to_checksum_address("0x" + jami_id),
            "",
            "",
        )
        tx = call.build_transaction(
            {  # type: ignore[arg-type]
                "from": self.account.address,
                "nonce": self.w3.eth.get_transaction_count(self.account.address, "pending"),
                "gas": 300_000,
                "gasPrice": gas_price,
                "chainId": self.chain_id,
            }
        )
        signed = self.account.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        if wait:
            self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.2)
        return "0x" + tx_hash.hex()


@pytest.fixture
def contract_address(server: ServerProcess) -> str:
    return server.registrar_address()


# -- lookups ------------------------------------------------------------------------------


def test_lookup_unknown_name_is_404(http: httpx.Client) -> None:
    answer = http.get(f"/name/{unique_name('free')}")
    assert answer.status_code == 404
    assert answer.json() == {"error": "name not registered"}
    assert answer.headers["content-type"] == JSON


# The tables of malformed requests are test_routes.py's (in process); over real HTTP, the
# cases whose bytes uvicorn decodes before the app sees them, on both databases.
@pytest.mark.parametrize(
    "raw_path",
    [
        pytest.param("/name/ab", id="too-short"),
        pytest.param("/name/a%2Fbc", id="encoded-slash"),
        pytest.param("/name/%FFabc", id="bad-utf8"),
        pytest.param("/name/abc%E2%80%8Bd", id="zero-width-space"),
    ],
)
def test_lookup_invalid_name_is_400(http: httpx.Client, raw_path: str) -> None:
    answer = http.get(raw_path)
    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid name"}


def test_lookup_after_register_matches_any_case(
    http: httpx.Client, new_account: AccountSupply
) -> None:
    account = new_account()
    name = unique_name("case")
    assert register(http, name, account.registration_body(name)).json() == {"success": True}
    for spelling in (name, name.upper(), name.capitalize()):
        answer = http.get(f"/name/{spelling}")
        assert answer.status_code == 200, spelling
        assert answer.json() == {
            "name": name,
            "addr": "0x" + account.jami_id,
            "publickey": account.publickey_b64,
            "signature": account.sign(name),
        }


def test_lookup_unicode_name_by_fold(http: httpx.Client, new_account: AccountSupply) -> None:
    account = new_account()
    name = "élodie-" + secrets.token_hex(2)
    assert register(http, name, account.registration_body(name)).status_code == 200
    # As typed, uppercase É, percent-encoded with uppercase hex as current clients do.
    typed = "%C3%89LODIE-" + name.split("-")[1].upper()
    answer = http.get(f"/name/{typed}")
    assert answer.status_code == 200
    assert answer.json()["name"] == name


def test_lookup_extras_answer_owner_key_and_signature(
    server: ServerProcess, http: httpx.Client, new_account: AccountSupply
) -> None:
    account = new_account()
    name = unique_name("extra")
    claimed_owner = secrets.token_hex(20)
    body = account.registration_body(name, owner=claimed_owner)
    assert register(http, name, body).status_code == 200
    # The body's owner proves nothing: the server's signer owns what it writes (README).
    signer = Account.from_key(server.env["JAMINS_SIGNER_KEY"]).address.lower()
    assert http.get(f"/name/{name}/owner").json() == {"name": name, "owner": signer}
    assert http.get(f"/name/{name.upper()}/publickey").json() == {
        "name": name,
        "publickey": account.publickey_b64,
    }
    assert http.get(f"/name/{name}/signature").json() == {
        "name": name,
        "signature": account.sign(name),
    }
    assert http.get(f"/name/{unique_name('nobody')}/owner").status_code == 404


# -- reverse lookups ----------------------------------------------------------------------


def test_lookup_addr_accepts_prefixes_and_case(
    http: httpx.Client, new_account: AccountSupply
) -> None:
    account = new_account()
    name = unique_name("rev")
    assert register(http, name, account.registration_body(name)).status_code == 200
    jami_id = account.jami_id
    for spelling in (
        jami_id,
        jami_id.upper(),
        "0x" + jami_id,
        "jami:" + jami_id,
        "ring:" + jami_id.upper(),
        "JAMI:0x" + jami_id,
    ):
        answer = http.get(f"/addr/{spelling}")
        assert answer.status_code == 200, spelling
        assert answer.json() == {"name": name}


def test_lookup_addr_unknown_is_404(http: httpx.Client) -> None:
    answer = http.get(f"/addr/{secrets.token_hex(20)}")
    assert answer.status_code == 404
    assert answer.json() == {"error": "address not registered"}


@pytest.mark.parametrize(
    "addr",
    [
        pytest.param("g" * 40, id="non-hex"),
        pytest.param("%20" + "a" * 40, id="leading-space"),
    ],
)
def test_lookup_addr_malformed_is_400(http: httpx.Client, addr: str) -> None:
    answer = http.get(f"/addr/{addr}")
    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid address"}


# -- registration -------------------------------------------------------------------------


@pytest.mark.nodes("anvil", "geth")
def test_register_captured_jamid_body_confirms_on_chain(
    http: httpx.Client, server: ServerProcess
) -> None:
    answer = register(http, CAPTURED_NAME, CAPTURED_BODY)
    assert answer.status_code == 200
    assert answer.json() == {"success": True}
    assert answer.headers["content-type"] == JSON
    # Durable and visible before it is mined: pending or already confirmed, never absent.
    assert http.get(f"/name/{CAPTURED_NAME}").status_code == 200
    settled = server.wait_settled(CAPTURED_NAME)
    assert settled["state"] == "confirmed"
    assert isinstance(settled["block"], int)
    assert str(settled["tx"]).startswith("0x")
    found = http.get("/name/RawName2").json()
    assert found["publickey"] == CAPTURED_BODY["publickey"]  # verbatim, trailing NUL too
    assert base64.b64decode(found["publickey"]).endswith(b"\0")
    assert found["addr"] == "0x" + CAPTURED_BODY["addr"]
    # Idempotent: the same body again is a success, not "taken".
    assert register(http, CAPTURED_NAME, CAPTURED_BODY).json() == {"success": True}


def test_register_taken_name_is_409(http: httpx.Client, new_account: AccountSupply) -> None:
    first, second = new_account(), new_account()
    name = unique_name("taken")
    assert register(http, name, first.registration_body(name)).status_code == 200
    answer = register(http, name, second.registration_body(name))
    assert answer.status_code == 409
    assert answer.json() == {"success": False, "error": "name already taken"}


def _lookalike_pair() -> tuple[str, str]:
    """A fresh ASCII name and its all-Cyrillic look-alike (same digits on both)."""
    digits = f"{secrets.randbelow(10**8):08d}"
    return "paypal" + digits, "\u0440\u0430\u0443\u0440\u0430\u04cf" + digits


def test_register_lookalike_of_taken_name_is_409(
    http: httpx.Client, new_account: AccountSupply
) -> None:
    latin, cyrillic = _lookalike_pair()
    first, second = new_account(), new_account()
    assert register(http, latin, first.registration_body(latin)).status_code == 200
    answer = register(http, cyrillic, second.registration_body(cyrillic))
    assert answer.status_code == 409
    assert answer.json() == {"success": False, "error": "name already taken"}
    # Lookups stay exact: the original resolves, the look-alike is a free name.
    assert http.get(f"/name/{latin}").json()["name"] == latin
    assert http.get(f"/name/{cyrillic}").status_code == 404


def test_register_ascii_name_after_its_lookalike_is_409(
    http: httpx.Client, new_account: AccountSupply
) -> None:
    latin, cyrillic = _lookalike_pair()
    first, second = new_account(), new_account()
    assert register(http, cyrillic, first.registration_body(cyrillic)).status_code == 200
    assert register(http, latin, second.registration_body(latin)).status_code == 409


def test_register_lookalike_of_name_registered_on_chain_is_409(
    http: httpx.Client, anvil: AnvilNode, contract_address: str, new_account: AccountSupply
) -> None:
    """A name written straight to the contract counts once SQL has it (here from a lookup;
    the indexer brings it too)."""
    latin, cyrillic = _lookalike_pair()
    DirectWriter(anvil, contract_address).reserve_for(latin, secrets.token_hex(20))
    assert http.get(f"/name/{latin}").status_code == 200
    account = new_account()
    assert register(http, cyrillic, account.registration_body(cyrillic)).status_code == 409


def test_register_second_name_for_address_is_403(
    http: httpx.Client, new_account: AccountSupply
) -> None:
    account = new_account()
    name, other = unique_name("one"), unique_name("two")
    assert register(http, name, account.registration_body(name)).status_code == 200
    answer = register(http, other, account.registration_body(other))
    assert answer.status_code == 403
    assert answer.json() == {
        "success": False,
        "error": "address already has a name",
        "name": name,
        "addr": "0x" + account.jami_id,
    }


@pytest.mark.parametrize(
    ("content", "error"),
    [
        pytest.param(b"not json", "body is not valid JSON", id="not-json"),
        pytest.param(
            b'{"addr": "' + b"a" * 20_000 + b'"}', "request body too large", id="too-large"
        ),
    ],
)
def test_register_malformed_body_is_400(http: httpx.Client, content: bytes, error: str) -> None:
    name = unique_name("bad")
    answer = register(http, name, content)
    assert answer.status_code == 400
    assert answer.json() == {"success": False, "error": error}
    assert http.get(f"/name/{name}").status_code == 404


def test_register_without_content_type_still_parses(
    http: httpx.Client, new_account: AccountSupply
) -> None:
    account = new_account()
    name = unique_name("curl")
    answer = http.post(f"/name/{name}", content=json.dumps(account.registration_body(name)))
    assert answer.status_code == 200


# -- the chain as the source of truth ----------------------------------------------------


@pytest.mark.nodes("anvil", "geth")
def test_lookup_fills_from_names_registered_directly_on_chain(
    http: httpx.Client, node: ChainNode, contract_address: str
) -> None:
    writer = DirectWriter(node, contract_address)
    name, jami_id = unique_name("direct"), secrets.token_hex(20)
    writer.reserve_for(name, jami_id)
    answer = http.get(f"/name/{name.upper()}")
    assert answer.status_code == 200
    assert answer.json() == {"name": name, "addr": "0x" + jami_id}
    other_name, other_id = unique_name("direct"), secrets.token_hex(20)
    writer.reserve_for(other_name, other_id)
    assert http.get(f"/addr/{other_id}").json() == {"name": other_name}


def test_register_name_taken_on_chain_is_409(
    http: httpx.Client, anvil: AnvilNode, contract_address: str, new_account: AccountSupply
) -> None:
    name = unique_name("chain")
    DirectWriter(anvil, contract_address).reserve_for(name, secrets.token_hex(20))
    account = new_account()
    answer = register(http, name, account.registration_body(name))
    assert answer.status_code == 409


def test_register_lost_on_chain_race_is_failed_not_confirmed(
    http: httpx.Client,
    anvil: AnvilNode,
    contract_address: str,
    new_account: AccountSupply,
    server: ServerProcess,
) -> None:
    """Our reserveFor is mined after another writer's for the same name: a mined
    transaction that changed nothing must end as failed, and lookups show the chain."""
    writer = DirectWriter(anvil, contract_address)
    account = new_account()
    name, rival_id = unique_name("race"), secrets.token_hex(20)
    rpc(anvil.url, "evm_setAutomine", [False])
    try:
        assert register(http, name, account.registration_body(name)).status_code == 200
        server.wait_sent(name)
        # Higher gas price: the rival's transaction goes first in the block.
        writer.reserve_for(name, rival_id, gas_price=50 * 10**9, wait=False)
        rpc(anvil.url, "evm_mine")
    finally:
        rpc(anvil.url, "evm_setAutomine", [True])
    settled = server.wait_settled(name)
    assert settled["state"] == "failed"
    assert "taken on chain" in str(settled["reason"])
    assert http.get(f"/name/{name}").json()["addr"] == "0x" + rival_id
    # The account is free to register another name now.
    retry = unique_name("retry")
    assert register(http, retry, account.registration_body(retry)).status_code == 200
    assert server.wait_settled(retry)["state"] == "confirmed"


def test_restart_keeps_every_name(
    http: httpx.Client, server: ServerProcess, new_account: AccountSupply
) -> None:
    account = new_account()
    name = unique_name("durable")
    assert register(http, name, account.registration_body(name)).status_code == 200
    server.restart()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get(f"/name/{name}").json()["addr"] == "0x" + account.jami_id
        assert client.get(f"/addr/{account.jami_id}").json() == {"name": name}
        assert server.wait_settled(name)["state"] == "confirmed"


def _eventually(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


@pytest.mark.nodes("anvil", "geth")
def test_direct_changes_reach_cached_lookups(
    http: httpx.Client, node: ChainNode, contract_address: str
) -> None:
    """setAddress and disown done on the contract replace answers already cached: the
    indexer's doing, as `server` keeps answers an hour (conftest.py), past this test."""
    writer = ChainWriter(node.url, funded_key(node), contract_address)
    name, first_id, second_id = unique_name("moved"), secrets.token_hex(20), secrets.token_hex(20)
    writer.reserve_for([DirectRecord(name=name, jami_id=first_id)])
    for _ in range(3):  # served, then from memory
        assert http.get(f"/name/{name}").json()["addr"] == "0x" + first_id
        assert http.get(f"/addr/{first_id}").json() == {"name": name}
    writer.set_address(name, second_id)
    assert _eventually(lambda: http.get(f"/name/{name}").json().get("addr") == "0x" + second_id)
    assert _eventually(lambda: http.get(f"/addr/{first_id}").status_code == 404)
    assert http.get(f"/addr/{second_id}").json() == {"name": name}
    writer.disown(name)
    assert _eventually(lambda: http.get(f"/name/{name}").status_code == 404)


# -- records written directly on the contract ----------------------------------------------


def test_reverse_lookup_needs_the_forward_lookup_to_agree(
    http: httpx.Client, anvil: AnvilNode, contract_address: str, new_account: AccountSupply
) -> None:
    """Issue 14 case 5: a fold-alike of a registered name and byte strings that are no
    names, written on the contract: never served, by name or by address."""
    account = new_account()
    name = unique_name("pgname")
    assert register(http, name, account.registration_body(name)).status_code == 200
    writer = DirectWriter(anvil, contract_address)
    tag = secrets.token_hex(3)
    written = {
        name.upper(): secrets.token_hex(20),
        f"rawname{tag} ": secrets.token_hex(20),
        f"a b{tag}": secrets.token_hex(20),
        f"x/owner{tag}": secrets.token_hex(20),
    }
    for chain_name, jami_id in written.items():
        writer.reserve_for(chain_name, jami_id)
    for jami_id in written.values():
        assert http.get(f"/addr/{jami_id}").status_code == 404
    assert http.get(f"/name/{name.upper()}").json()["addr"] == "0x" + account.jami_id
    assert http.get(f"/addr/{account.jami_id}").json() == {"name": name}


def test_name_held_without_address_is_taken_everywhere(
    http: httpx.Client, anvil: AnvilNode, contract_address: str, new_account: AccountSupply
) -> None:
    """Issue 14 case 6: reserved on chain with a zero addr. Lookups say it exists with no
    address (never 404 "free"), registrations say taken."""
    writer = DirectWriter(anvil, contract_address)
    name = unique_name("held")
    writer.reserve_for(name, "0" * 40)
    assert http.get(f"/name/{name}").json() == {"name": name, "addr": ""}
    owner = http.get(f"/name/{name}/owner").json()
    assert owner == {"name": name, "owner": writer.account.address.lower()}
    account = new_account()
    assert register(http, name, account.registration_body(name)).status_code == 409
    assert http.get(f"/addr/{'0' * 40}").status_code == 404
